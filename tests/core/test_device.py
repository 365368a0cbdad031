"""--device: auto picks CUDA, then MPS, then the CPU; an absent device is a one-line ConfigError."""

from __future__ import annotations

import pytest
import torch

from detailclip_cli.core import device as device_mod
from detailclip_cli.core.config import ConfigError
from detailclip_cli.core.device import resolve_device


@pytest.mark.parametrize("cuda, mps, expected", [(True, True, "cuda"), (False, True, "mps"), (False, False, "cpu")])
def test_auto_prefers_cuda_then_mps_then_cpu(monkeypatch, cuda, mps, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(device_mod, "mps_available", lambda: mps)
    assert resolve_device("auto") == torch.device(expected)


def test_mps_is_accepted_where_present_and_refused_where_absent(monkeypatch):
    monkeypatch.setattr(device_mod, "mps_available", lambda: True)
    assert resolve_device("mps") == torch.device("mps")
    monkeypatch.setattr(device_mod, "mps_available", lambda: False)
    with pytest.raises(ConfigError, match="--device mps was asked for but MPS is not available"):
        resolve_device("mps")
    with pytest.raises(ConfigError, match="device must be auto, cpu, cuda\\[:N\\] or mps, not 'tpu'"):
        resolve_device("tpu")
