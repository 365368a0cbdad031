"""What a model is: architecture, parameter counts, training settings and provenance.

:func:`model_info` describes anything our commands load (the shipped model, a run folder, a
saved model folder, ``open_clip:NAME``) as one JSON-ready dict, for ``detailclip info``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from detailclip_cli.core.store.io import MODEL_FILE

RUN_FILE = "run.json"
STATE_JSON = "train_state.json"
METRICS_FILE = "metrics.jsonl"
# The training settings worth a line each; the full config stays in run.json.
TRAINING_KEYS = ("steps", "batch_size", "lr", "weight_decay", "warmup_steps", "removal", "keep_ratio",
                 "block_size", "score_layer", "w_clip", "w_rec", "w_patch", "w_cls", "seed")


def model_info(spec: str | None, *, pretrained: str | None = None) -> dict[str, Any]:
    """Describe the model ``spec`` names (as ``--model`` takes it); loads its weights to count them.

    Returns:
        ``{"model", "kind", "architecture", "parameters", "weights", "training", "provenance"}``;
        ``weights``, ``training`` and ``provenance`` are None where the model has no such record
        (an open_clip model has no run; a saved model folder may have no run.json).
    """
    from detailclip_cli.core.store.lookup import local_model_folder, resolve_model, shipped_model_dir

    model = resolve_model(spec, pretrained=pretrained)
    folder = local_model_folder(spec)
    label = spec or str(shipped_model_dir())
    info: dict[str, Any] = {
        "model": label + (f" ({pretrained})" if pretrained else ""),
        "kind": "open_clip" if folder is None else ("run" if (folder / STATE_JSON).is_file() else "model folder"),
        "architecture": model.cfg.to_dict(),
        "mechanisms": {"decoder": model.decoder is not None, "distillation_head": model.head is not None},
        "parameters": model.num_params(),
        "weights": _weights(folder / MODEL_FILE) if folder is not None else None,
        "training": None,
        "provenance": None,
    }
    if folder is not None and (folder / RUN_FILE).is_file():
        run = json.loads((folder / RUN_FILE).read_text())
        train = run.get("train", {})
        info["training"] = {
            "data": run.get("data"),
            "command": run.get("command"),
            "preset": run.get("preset"),
            **{k: train[k] for k in TRAINING_KEYS if k in train},
            **_progress(folder),
        }
        info["provenance"] = {k: run.get(k) for k in ("detailclip_version", "torch_version", "device")}
        if "data_report" in run:
            info["training"]["data_report"] = {k: v for k, v in run["data_report"].items() if k != "examples"}
    elif folder is None:
        info["provenance"] = {"open_clip": spec, "pretrained": pretrained}
    return info


def _weights(path: Path) -> dict[str, Any]:
    """Size, storage dtypes, step tag and SHA-256 of a safetensors file (header and bytes only)."""
    from safetensors import safe_open

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


def _progress(folder: Path) -> dict[str, Any]:
    """The last checkpoint's step and the last logged losses of a run folder, when it has them."""
    out: dict[str, Any] = {}
    if (folder / STATE_JSON).is_file():
        out["checkpoint_step"] = json.loads((folder / STATE_JSON).read_text()).get("step")
    metrics = folder / METRICS_FILE
    if metrics.is_file():
        last = None
        for line in metrics.read_text(errors="replace").splitlines():
            try:
                last = json.loads(line)
            except ValueError:
                continue
        if isinstance(last, dict):
            out["last_logged"] = {k: v for k, v in last.items()
                                  if k in ("step", "loss", "clip", "rec", "cls", "patch", "elapsed_s")}
    return out
