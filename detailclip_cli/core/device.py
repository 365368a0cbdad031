"""Devices, precision and seeding: where and how a computation runs."""

from __future__ import annotations

import random

import numpy as np
import torch

from detailclip_cli.core.config import ConfigError


def mps_available() -> bool:
    """Whether Apple's Metal GPU (MPS) is usable: an Apple-silicon Mac with a torch built for it."""
    backend = getattr(torch.backends, "mps", None)
    return backend is not None and backend.is_available()


def resolve_device(device: str) -> torch.device:
    """``auto`` -> cuda, else mps (Apple silicon), else cpu; errors clearly for an absent one.

    ``mps`` runs in fp32 (``precision auto``); ops MPS lacks fall back to the CPU only when
    ``PYTORCH_ENABLE_MPS_FALLBACK=1`` is set (see docs/distributed.md).
    """
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps" if mps_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for but no CUDA GPU is available")
    if device == "mps" and not mps_available():
        raise ConfigError("--device mps was asked for but MPS is not available (it needs an Apple-silicon Mac "
                          "and a torch built with MPS)")
    if device not in ("cpu", "mps") and not device.startswith("cuda"):
        raise ConfigError(f"device must be auto, cpu, cuda[:N] or mps, not {device!r}")
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
