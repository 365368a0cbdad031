"""A random tiny model and a few images, shared by the ``core.use`` tests."""

from __future__ import annotations

import pytest
import torch

from detailclip_cli.core.config import load_preset
from detailclip_cli.core.model.detailclip import DetailCLIP


@pytest.fixture(scope="module")
def model():
    """A random tiny model with a decoder (no head: using a model never needs it)."""
    cfg, _ = load_preset("tiny")
    cfg.vision.depth = 2
    cfg.head = None
    torch.manual_seed(0)
    return DetailCLIP(cfg).eval()


@pytest.fixture(scope="module")
def images(model):
    """(3, 3, S, S) random normalised images."""
    torch.manual_seed(1)
    size = model.cfg.vision.image_size
    return torch.randn(3, 3, size, size)
