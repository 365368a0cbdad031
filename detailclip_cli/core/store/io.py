"""Saving and loading: a model is a folder of ``model.safetensors`` + ``config.json``.

Nothing here pickles: weights go through safetensors, settings through JSON, and every write
is atomic (temporary file, flush, fsync, rename) so an interrupted save leaves the previous
file intact.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from detailclip_cli.core.config import ConfigError, ModelConfig
from detailclip_cli.core.files import atomic_write, write_json
from detailclip_cli.core.model.detailclip import DetailCLIP
from detailclip_cli.errors import UsageError

MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"


class ModelLoadError(UsageError, ValueError):
    """A path that does not hold a loadable model; the message names the file."""


def save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """Atomically save a flat dict of tensors as safetensors."""
    flat = {k: v.detach().contiguous() for k, v in tensors.items()}
    atomic_write(path, lambda p: save_file(flat, str(p), metadata=metadata))


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelLoadError(f"{path} is not a readable safetensors file ({exc})") from None


def save_model(model: torch.nn.Module, folder: Path, *, dtype: torch.dtype | None = None,
               metadata: dict[str, str] | None = None) -> Path:
    """Save ``model`` (a :class:`DetailCLIP`) as ``folder/model.safetensors`` + ``folder/config.json``.

    Args:
        model: the model; its ``cfg`` is written as the config.
        folder: destination folder (created).
        dtype: optional storage dtype for floating tensors (e.g. ``torch.float16`` to halve size).
        metadata: extra string metadata stored in the safetensors header.
    """
    folder = Path(folder)
    state = {k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v)
             for k, v in model.state_dict().items()}
    save_tensors(folder / MODEL_FILE, state, {"format": "pt", **(metadata or {})})
    write_json(folder / CONFIG_FILE, model.cfg.to_dict())
    return folder


def read_model_config(folder: Path) -> ModelConfig:
    path = Path(folder) / CONFIG_FILE
    try:
        data = json.loads(path.read_text())
        if not isinstance(data, dict):
            raise ModelLoadError(f"{path} must hold a JSON object")
        cfg = ModelConfig.from_dict(data)
        cfg.validate()
        return cfg
    except FileNotFoundError:
        raise ModelLoadError(f"{path} not found: not a model folder") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ModelLoadError(f"{path} is not valid JSON") from None
    except (ConfigError, TypeError) as exc:
        raise ModelLoadError(f"{path}: {exc}") from None


def load_model(folder: Path, *, device: str | torch.device = "cpu") -> DetailCLIP:
    """Rebuild a :class:`DetailCLIP` from a model folder (weights cast to fp32).

    Raises:
        ModelLoadError: missing or unreadable files, or weights that do not match the config.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ModelLoadError(f"{folder} is not a model folder (expected {MODEL_FILE} and {CONFIG_FILE})")
    cfg = read_model_config(folder)
    model = DetailCLIP(cfg)
    weights = folder / MODEL_FILE
    if not weights.exists():
        raise ModelLoadError(f"{weights} not found: not a model folder")
    state = {k: v.float() if v.is_floating_point() else v for k, v in load_tensors(weights).items()}
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatches
        first = str(exc).strip().splitlines()[-1].strip()
        raise ModelLoadError(f"{weights} does not match {folder / CONFIG_FILE}: {first}") from None
    if missing or unexpected:
        detail = f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}"
        raise ModelLoadError(f"{weights} does not match {folder / CONFIG_FILE}: {detail}")
    return model.to(device).eval()
