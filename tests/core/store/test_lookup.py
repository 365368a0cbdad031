"""Model lookup: the shipped model (package data), model folders, and one-line refusals."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import detailclip_cli
from detailclip_cli.core.config import load_preset
from detailclip_cli.core.model.detailclip import DetailCLIP
from detailclip_cli.core.store import lookup
from detailclip_cli.core.store.io import ModelLoadError, save_model
from detailclip_cli.errors import UsageError


@pytest.fixture(scope="module")
def model():
    cfg, _ = load_preset("tiny")
    cfg.vision.depth, cfg.head = 1, None
    torch.manual_seed(0)
    return DetailCLIP(cfg).eval()


def test_the_shipped_model_is_package_data():
    folder = lookup.shipped_model_dir()
    # Inside the package (so a wheel carries it), not beside it in the repository.
    assert folder.is_relative_to(Path(detailclip_cli.__file__).parent), folder
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors", "run.json"]
    assert lookup.local_model_folder(None) == folder


def test_default_model_missing_says_so_in_one_line(monkeypatch, tmp_path):
    missing = tmp_path / "shipped" / "detailclip-tiny"
    monkeypatch.setattr(lookup, "shipped_model_dir", lambda: missing)
    with pytest.raises(ModelLoadError) as info:
        lookup.resolve_model(None)
    assert str(info.value) == f"no --model given and the shipped model detailclip-tiny is missing from {missing}"


def test_default_and_folder_models_load(monkeypatch, tmp_path, model):
    folder = save_model(model, tmp_path / "detailclip-tiny")
    monkeypatch.setattr(lookup, "shipped_model_dir", lambda: folder)
    assert isinstance(lookup.resolve_model(None), DetailCLIP)
    loaded = lookup.resolve_model(str(folder))
    assert loaded.cfg == model.cfg and not loaded.training
    # A path to the weights file means its folder.
    assert lookup.resolve_model(str(folder / "model.safetensors")).cfg == model.cfg


def test_paths_that_are_not_models_are_named(tmp_path):
    with pytest.raises(ModelLoadError, match="model not found: .*nowhere"):
        lookup.resolve_model(str(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match=r"empty is not a model"):
        lookup.resolve_model(str(tmp_path / "empty"))
    with pytest.raises(UsageError, match="--pretrained only applies"):
        lookup.resolve_model(str(tmp_path / "empty"), pretrained="openai")
