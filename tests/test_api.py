"""The public library surface, ``detailclip_cli.core``: lazy, complete, and the README's example runs."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

import detailclip_cli.core as dc

README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.mark.slow
def test_importing_the_library_imports_no_torch_until_a_name_is_used():
    code = (
        "import sys\n"
        "import detailclip_cli.core as dc\n"
        "assert 'torch' not in sys.modules, 'torch imported eagerly'\n"
        "assert set(dc.__all__) <= set(dir(dc))\n"
        "dc.zero_shot\n"
        "assert 'torch' in sys.modules\n"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr


def test_every_name_resolves_to_its_home():
    from detailclip_cli.core.config import ModelConfig, TrainConfig, load_preset
    from detailclip_cli.core.store.lookup import resolve_model
    from detailclip_cli.core.training.distill import distill
    from detailclip_cli.core.training.pretrain import train
    from detailclip_cli.core.use.evaluate import run_evaluation

    assert sorted(dc.__all__) == sorted([
        "load_model", "load_images", "encode_images", "encode_texts", "zero_shot", "attention_maps",
        "reconstruct", "pretrain", "distill", "evaluate", "load_preset", "ModelConfig", "TrainConfig"])
    assert sorted(dc._NAMES) == sorted(dc.__all__)
    for name in dc.__all__:
        assert getattr(dc, name) is not None, name
    assert dc.load_model is resolve_model and dc.pretrain is train and dc.distill is distill
    assert dc.evaluate is run_evaluation and dc.load_preset is load_preset
    assert dc.ModelConfig is ModelConfig and dc.TrainConfig is TrainConfig
    with pytest.raises(AttributeError, match="no_such_name"):
        dc.no_such_name  # noqa: B018


def _readme_example() -> str:
    """The README's first ```python block, padded so that its line numbers are the README's."""
    text = README.read_text(encoding="utf-8")
    match = re.search(r"^```python\n(.*?)^```", text, flags=re.S | re.M)
    assert match, "README.md has no ```python block"
    return "\n" * text[:match.start(1)].count("\n") + match.group(1)


def test_the_readme_example_runs(tmp_path, monkeypatch):
    """The README's first Python block, executed as written on a generated photo.jpg."""
    Image.effect_noise((96, 72), 64).convert("RGB").save(tmp_path / "photo.jpg")
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(_readme_example(), str(README), "exec"), scope)  # noqa: S102

    model, images = scope["model"], scope["images"]
    size = model.cfg.vision.image_size
    grid = model.visual.grid_size
    width = model.cfg.embed_dim
    assert images.shape == (1, 3, size, size)
    probs = scope["probs"]
    assert probs.shape == (1, 2)
    torch.testing.assert_close(probs.sum(dim=1), torch.ones(1))
    for name, rows in (("image_emb", 1), ("text_emb", 1)):
        emb = scope[name]
        assert emb.shape == (rows, width), name
        torch.testing.assert_close(emb.norm(dim=-1), torch.ones(rows))
    assert scope["maps"].scores.shape == (1, *grid)
    assert scope["recon"].pred.shape == (1, 3, size, size)
    # The pieces agree: with the bare label as the one template, zero-shot is the softmax of
    # the scaled cosines between encode_images and encode_texts.
    labels = ["a dog", "a cat"]
    with torch.no_grad():
        expected = (model.scale() * dc.encode_images(model, images) @ dc.encode_texts(model, labels).T).softmax(-1)
    torch.testing.assert_close(dc.zero_shot(model, images, labels, templates=["{}"]), expected,
                               atol=1e-6, rtol=0)
