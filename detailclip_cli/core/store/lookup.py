"""Model lookup: a run folder, a model folder, ``open_clip:NAME`` or the shipped model, as one function."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import SafetensorError

from detailclip_cli.core.config import ConfigError
from detailclip_cli.core.store.io import CONFIG_FILE, MODEL_FILE, ModelLoadError, load_model, read_model_config
from detailclip_cli.core.store.openclip import load_open_clip, open_clip_name
from detailclip_cli.core.store.run import RunFolder
from detailclip_cli.core.store.shipped import SHIPPED_MODEL, shipped_model_dir
from detailclip_cli.errors import UsageError

def resolve_model(spec: str | None = None, *, pretrained: str | None = None, device: str | torch.device = "cpu",
                  verify: bool = True):
    """Load the model a user named.

    Args:
        spec: None (the shipped model), a run folder or model folder (``model.safetensors`` +
            ``config.json``; a path to either file also works), or ``open_clip:NAME``.
        pretrained: for ``open_clip:NAME`` only, a pretrained tag or a local weights file.
        device: where the model lives.
        verify: check our weights against the SHA-256 their ``config.json`` records (a model
            saved without one has nothing to check); non-finite weights are refused either way.

    Returns:
        A :class:`DetailCLIP` in eval mode.

    Raises:
        ModelLoadError: the spec names nothing loadable (the message names it).
        UsageError: ``pretrained`` given for a model that is not ``open_clip:NAME``.
    """
    if spec is not None and (name := open_clip_name(spec)) is not None:
        if not name:
            raise ModelLoadError("open_clip: needs an architecture name, e.g. open_clip:ViT-B-32")
        try:
            return load_open_clip(name, pretrained, device=device)
        except SafetensorError as exc:  # a .safetensors --pretrained that is not one (e.g. a pickle)
            detail = " ".join(str(exc).split())
            raise ModelLoadError(f"cannot load open_clip model {name!r} with pretrained={pretrained!r}: "
                                 f"not a readable safetensors file ({detail})") from None
    if pretrained is not None:
        raise UsageError("--pretrained only applies to open_clip:NAME models")
    if spec is None:
        folder = shipped_model_dir()
        if not (folder / MODEL_FILE).is_file() or not (folder / CONFIG_FILE).is_file():
            raise ModelLoadError(f"no --model given and the shipped model {SHIPPED_MODEL} is missing from {folder}")
        return load_model(folder, device=device, verify=verify)
    return load_model(model_folder(spec), device=device, verify=verify)


def model_folder(spec: str | Path) -> Path:
    """The model folder a path names (the folder itself, or the folder of its weights/config file)."""
    path = Path(spec).expanduser()
    if not path.exists():
        raise ModelLoadError(f"model not found: {spec} (give a run folder, a model folder or open_clip:NAME)")
    if path.is_file() and path.name in (MODEL_FILE, CONFIG_FILE):
        path = path.parent
    if not (path.is_dir() and (path / MODEL_FILE).is_file() and (path / CONFIG_FILE).is_file()):
        raise ModelLoadError(
            f"{spec} is not a model (expected a folder with {MODEL_FILE} and {CONFIG_FILE}, or open_clip:NAME)"
        )
    return path


def local_model_folder(spec: str | None) -> Path | None:
    """The folder of a local model spec; None for ``open_clip:NAME`` or a path naming no model."""
    if spec is not None and open_clip_name(spec) is not None:
        return None
    try:
        return shipped_model_dir() if spec is None else model_folder(spec)
    except ModelLoadError:
        return None


def has_decoder(spec: str | None) -> bool:
    """Whether the model a spec names has a pixel decoder, read from its config (no weights loaded).

    ``open_clip:NAME`` models never have one. A spec that names no model reports True here
    and fails properly when it is loaded.
    """
    if spec is not None and open_clip_name(spec) is not None:
        return False
    folder = local_model_folder(spec)
    try:
        return folder is None or read_model_config(folder).decoder is not None
    except ModelLoadError:
        return True


def run_train_settings(spec: str | None) -> dict | None:
    """The training settings of a run folder (its ``run.json``); None for any other model."""
    folder = local_model_folder(spec)
    if folder is None:
        return None
    try:
        _, train_cfg, _ = RunFolder(folder).settings()
    except (ConfigError, ModelLoadError, OSError, ValueError, KeyError):
        return None
    return train_cfg.to_dict()
