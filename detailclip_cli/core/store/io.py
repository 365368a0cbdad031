"""Saving and loading: a model is a folder of ``model.safetensors`` + ``config.json``.

Nothing here pickles: weights go through safetensors, settings through JSON, and every write
is atomic (temporary file, flush, fsync, rename) so an interrupted save leaves the previous
file intact.

``config.json`` also records the SHA-256 of the weights file it was saved with
(``weights_sha256``), and :func:`load_model` checks it (``verify=False`` skips the check), so
weights changed after saving are refused rather than used. A folder saved before the checksum
existed has none, and loads as before. Weights holding NaN or Inf are always refused.
"""

from __future__ import annotations

import hashlib
import json
import os
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
# The key of config.json that holds the weights file's SHA-256 (hex); not part of ModelConfig.
CHECKSUM_KEY = "weights_sha256"


class ModelLoadError(UsageError, ValueError):
    """A path that does not hold a loadable model; the message names the file."""


def save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> str:
    """Atomically save a flat dict of tensors as safetensors; returns the file's SHA-256 (hex).

    Raises:
        OSError: the file could not be written (a full disk's ``SafetensorError`` becomes one,
            with its errno, so callers handle every write failure alike).
    """
    flat = {k: v.detach().contiguous() for k, v in tensors.items()}
    digest = []

    def write(tmp: Path) -> None:
        try:
            save_file(flat, str(tmp), metadata=metadata)
        except SafetensorError as exc:  # safetensors reports I/O errors as its own class
            number = _errno_of(str(exc))
            raise OSError(number, os.strerror(number) if number else " ".join(str(exc).split())) from None
        digest.append(sha256_file(tmp))  # of the bytes written, before the rename

    atomic_write(path, write)
    return digest[0]


def _errno_of(message: str) -> int | None:
    """The errno in a safetensors I/O message (``... (os error 28)``), or None."""
    tail = message.rsplit("os error ", 1)
    number = tail[1].split(")")[0] if len(tail) == 2 else ""
    return int(number) if number.isdigit() else None


def sha256_file(path: Path) -> str:
    """The SHA-256 of a file's bytes, hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_tensors(path: Path, *, sha256: str | None = None) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file; with ``sha256``, only if the file's bytes have it.

    Raises:
        ModelLoadError: unreadable, not safetensors (a pickle named ``.safetensors`` too), or a
            different checksum; one line naming the file.
    """
    if sha256 is not None:
        try:
            actual = sha256_file(path)
        except OSError as exc:
            raise ModelLoadError(f"{path} cannot be read ({exc.strerror or exc})") from None
        if actual != sha256:
            raise ModelLoadError(f"{path} has changed since it was saved: its SHA-256 is {actual[:12]}..., "
                                 f"the one recorded is {sha256[:12]}... (a damaged or altered file; --no-verify "
                                 "loads it anyway)")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        detail = " ".join(str(exc).split())
        raise ModelLoadError(f"{path} is not a readable safetensors file ({detail})") from None


def check_finite(tensors: dict[str, torch.Tensor], path: Path) -> None:
    """Refuse weights holding NaN or Inf (they would turn every output into NaN).

    Raises:
        ModelLoadError: naming the file, the first such tensor and how many such tensors there are.
    """
    bad = [k for k, v in tensors.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        more = f" and {len(bad) - 1} more" if len(bad) > 1 else ""
        raise ModelLoadError(f"{path} holds non-finite weights (NaN or Inf) in {bad[0]}{more}; refusing to load it")


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
    digest = save_tensors(folder / MODEL_FILE, state, {"format": "pt", **(metadata or {})})
    write_json(folder / CONFIG_FILE, {**model.cfg.to_dict(), CHECKSUM_KEY: digest})
    return folder


def _config_document(folder: Path) -> dict:
    """``config.json`` of a model folder as saved (the model config and the weights checksum)."""
    path = Path(folder) / CONFIG_FILE
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ModelLoadError(f"{path} not found: not a model folder") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ModelLoadError(f"{path} is not valid JSON") from None
    except OSError as exc:
        raise ModelLoadError(f"{path} cannot be read ({exc.strerror or exc})") from None
    if not isinstance(data, dict):
        raise ModelLoadError(f"{path} must hold a JSON object")
    return data


def read_model_config(folder: Path) -> ModelConfig:
    """The validated :class:`ModelConfig` of a model folder.

    Raises:
        ModelLoadError: a missing, unreadable or invalid ``config.json``, named.
    """
    path = Path(folder) / CONFIG_FILE
    data = _config_document(folder)
    data.pop(CHECKSUM_KEY, None)
    try:
        cfg = ModelConfig.from_dict(data)
        cfg.validate()
        return cfg
    except (ConfigError, TypeError) as exc:
        raise ModelLoadError(f"{path}: {exc}") from None


def weights_checksum(folder: Path) -> str | None:
    """The SHA-256 ``config.json`` records for the folder's weights; None for a folder saved without one."""
    value = _config_document(folder).get(CHECKSUM_KEY)
    return value if isinstance(value, str) else None


def load_model(folder: Path, *, device: str | torch.device = "cpu", verify: bool = True) -> DetailCLIP:
    """Rebuild a :class:`DetailCLIP` from a model folder (weights cast to fp32).

    Args:
        folder: the model folder (or run folder).
        device: where the model lives.
        verify: check the weights against the SHA-256 in ``config.json`` (when it has one).

    Raises:
        ModelLoadError: missing or unreadable files, weights changed since they were saved,
            non-finite weights, or weights that do not match the config.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ModelLoadError(f"{folder} is not a model folder (expected {MODEL_FILE} and {CONFIG_FILE})")
    cfg = read_model_config(folder)
    model = DetailCLIP(cfg)
    weights = folder / MODEL_FILE
    if not weights.exists():
        raise ModelLoadError(f"{weights} not found: not a model folder")
    tensors = load_tensors(weights, sha256=weights_checksum(folder) if verify else None)
    check_finite(tensors, weights)
    state = {k: v.float() if v.is_floating_point() else v for k, v in tensors.items()}
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatches
        first = str(exc).strip().splitlines()[-1].strip()
        raise ModelLoadError(f"{weights} does not match {folder / CONFIG_FILE}: {first}") from None
    if missing or unexpected:
        detail = f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}"
        raise ModelLoadError(f"{weights} does not match {folder / CONFIG_FILE}: {detail}")
    return model.to(device).eval()
