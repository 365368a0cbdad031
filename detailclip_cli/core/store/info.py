"""What a model is: architecture, parameter counts, training settings and provenance.

:func:`model_info` describes anything our commands load (the shipped model, a run folder, a
saved model folder, ``open_clip:NAME``) as one JSON-ready dict, for ``detailclip info``.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from safetensors import safe_open

from detailclip_cli import __version__
from detailclip_cli.core.store.io import MODEL_FILE
from detailclip_cli.core.store.lookup import local_model_folder, resolve_model
from detailclip_cli.core.store.run import RunFolder
from detailclip_cli.core.store.shipped import shipped_model_dir

# The training settings worth a line each; the full config stays in run.json.
TRAINING_KEYS = ("steps", "batch_size", "lr", "weight_decay", "warmup_steps", "removal", "keep_ratio",
                 "block_size", "score_layer", "w_clip", "w_rec", "w_patch", "w_cls", "simclr_term", "seed")


def model_info(spec: str | None, *, pretrained: str | None = None, verify: bool = True) -> dict[str, Any]:
    """Describe the model ``spec`` names (as ``--model`` takes it); loads its weights to count them.

    Args:
        spec: as :func:`resolve_model` takes it (None: the shipped model).
        pretrained: with ``open_clip:NAME``, a pretrained tag or a local weights file.
        verify: check the weights against the SHA-256 their ``config.json`` records (``--no-verify``
            describes a changed file all the same; its ``sha256`` shows the file as it is now).

    Returns:
        ``{"model", "kind", "architecture", "mechanisms", "parameters", "weights", "training",
        "provenance", "detailclip_version"}``; ``weights``, ``training`` and ``provenance`` are
        None where the model has no such record (an open_clip model has no run; a saved model
        folder may have no run.json). ``detailclip_version`` is this package's version (the one
        a run was trained with is in ``provenance``).
    """
    model = resolve_model(spec, pretrained=pretrained, verify=verify)
    folder = local_model_folder(spec)
    run = RunFolder(folder) if folder is not None else None
    label = spec or str(shipped_model_dir())
    info: dict[str, Any] = {
        "model": label + (f" ({pretrained})" if pretrained else ""),
        "kind": "open_clip" if run is None else ("run" if run.is_run() else "model folder"),
        "architecture": model.cfg.to_dict(),
        "mechanisms": {"decoder": model.decoder is not None, "distillation_head": model.head is not None},
        "parameters": model.num_params(),
        "weights": _weights(folder / MODEL_FILE) if folder is not None else None,
        "training": None,
        "provenance": None,
        "detailclip_version": __version__,  # of the package describing it; the training's is in provenance
    }
    if run is not None and run.has_settings():
        settings = run.recorded()
        train = settings.get("train", {})
        info["training"] = {
            "data": settings.get("data"),
            "command": settings.get("command"),
            "preset": settings.get("preset"),
            # The method (core/recipes); a run from before recipes has none recorded.
            "recipe": settings.get("recipe"),
            # A distill run's self-supervised objective (distill --method); None with a teacher.
            **({"method": settings["method"]} if settings.get("method") else {}),
            **{k: train[k] for k in TRAINING_KEYS if k in train},
            **_progress(run),
        }
        info["provenance"] = {k: settings.get(k) for k in ("detailclip_version", "torch_version", "device")}
        if "data_report" in settings:
            info["training"]["data_report"] = {k: v for k, v in settings["data_report"].items() if k != "examples"}
    elif folder is None:
        info["provenance"] = {"open_clip": spec, "pretrained": pretrained}
    return info


def _weights(path: Path) -> dict[str, Any]:
    """Size, storage dtypes, step tag and SHA-256 of a safetensors file (header and bytes only)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    dtypes: dict[str, int] = {}
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata() or {}
        for key in f.keys():
            dtype = str(f.get_slice(key).get_dtype())
            dtypes[dtype] = dtypes.get(dtype, 0) + 1
    return {"file": str(path), "bytes": path.stat().st_size, "tensors_by_dtype": dtypes,
            "step": int(metadata["step"]) if metadata.get("step", "").isdigit() else None,
            "sha256": digest.hexdigest()}


def _progress(run: RunFolder) -> dict[str, Any]:
    """The last checkpoint's step and the last logged losses of a run folder, when it has them."""
    out: dict[str, Any] = {}
    if run.is_run():
        out["checkpoint_step"] = run.checkpoint_step()
    rows = run.metrics()
    if rows:
        out["last_logged"] = {k: v for k, v in rows[-1].items()
                              if k in ("step", "loss", "clip", "simclr", "rec", "cls", "patch", "elapsed_s")}
    return out
