"""Helpers shared by several test modules (``tests/`` is on pytest's ``pythonpath``)."""

from __future__ import annotations

import dataclasses
import json
import sys

import open_clip
import pytest

from detailclip_cli.cli import main
from detailclip_cli.core.config import ModelConfig, load_preset

# A tiny open_clip architecture (the image and text towers of ViT-B/16 in miniature).
TINY = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "head_width": 32, "patch_size": 8},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}


def small_model_cfg(**changes) -> ModelConfig:
    """The tiny preset shrunk further for speed: 64 px / 8 px patches, depth 2, width 48."""
    model, _ = load_preset("tiny")
    r = dataclasses.replace
    model = r(
        model,
        embed_dim=32,
        vision=r(model.vision, width=48, depth=2, heads=3),
        text=r(model.text, vocab_size=500, context_length=8, width=32, heads=2, layers=1),
        decoder=r(model.decoder, width=32, heads=2),
        head=r(model.head, out_dim=64, hidden_dim=64, bottleneck_dim=32),
    )
    return r(model, **changes)


def cli(monkeypatch, capsys, *args) -> tuple[int, str]:
    """Run the console entry point in-process: (exit code, stderr)."""
    monkeypatch.setattr(sys, "argv", ["detailclip", *map(str, args)])
    with pytest.raises(SystemExit) as info:
        main()
    return info.value.code, capsys.readouterr().err


def register(tmp_path, name: str, **changes) -> str:
    """Register a tiny open_clip architecture under ``name`` (the registry is global, names are unique)."""
    cfg = json.loads(json.dumps(TINY))
    for key, value in changes.items():
        if key in ("vision_cfg", "text_cfg"):
            cfg[key].update(value)
        else:
            cfg[key] = value
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(cfg))
    open_clip.add_model_config(path)
    return name
