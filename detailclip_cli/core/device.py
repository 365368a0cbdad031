"""Devices, precision and seeding: where and how a computation runs."""

from __future__ import annotations

import random

import numpy as np
import torch

from detailclip_cli.core.config import ConfigError


def resolve_device(device: str) -> torch.device:
    """``auto`` -> cuda when available, else cpu; errors clearly for an absent cuda."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for but no CUDA GPU is available")
    if device not in ("cpu",) and not device.startswith("cuda"):
        raise ConfigError(f"device must be auto, cpu or cuda[:N], not {device!r}")
    return torch.device(device)


def seed_everything(seed: int) -> None:
    """Seed torch, Python and NumPy, so that model initialisation is reproducible."""
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed)


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of a ``precision`` setting on ``device``; None for plain fp32."""
    if precision == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
