"""`pretrain --init` starts from an open_clip checkpoint; `--lock-text` keeps its text tower as it was."""

from __future__ import annotations

import json

import open_clip
import pytest
import torch
from helpers import cli, register  # tests/ is on pytest's pythonpath

from detailclip_cli.core.config import load_preset
from detailclip_cli.core.store.init_weights import load_init
from detailclip_cli.core.store.io import load_tensors
from detailclip_cli.core.training.pretrain import train
from detailclip_cli.core.use.zeroshot import build_classifier, classify

NAME = "detailclip-test-init-tiny"


@pytest.fixture(scope="module")
def oc_weights(tmp_path_factory):
    """A random tiny open_clip CLIP (QuickGELU, ln_pre, no patch bias) saved as safetensors."""
    from safetensors.torch import save_file

    tmp = tmp_path_factory.mktemp("init")
    register(tmp, NAME, quick_gelu=True)
    torch.manual_seed(3)
    model = open_clip.create_model(NAME)
    with torch.no_grad():
        model.logit_scale.fill_(2.9)
    weights = tmp / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    return weights


@pytest.fixture(scope="module")
def captioned(tmp_path_factory):
    """Sixteen small captioned images: enough for batches of four."""
    from PIL import Image

    folder = tmp_path_factory.mktemp("captioned")
    g = torch.Generator().manual_seed(0)
    for i in range(16):
        pixels = (torch.rand(40, 40, 3, generator=g) * 255).to(torch.uint8).numpy()
        Image.fromarray(pixels).save(folder / f"img{i:02d}.png")
        (folder / f"img{i:02d}.txt").write_text(f"a picture of noise number {i}")
    return folder


def test_init_reproduces_the_open_clip_model_before_training(oc_weights, captioned, tmp_path):
    reference = open_clip.create_model(NAME, pretrained=str(oc_weights)).eval()
    preset_cfg, train_cfg = load_preset("tiny")
    model_cfg, init = load_init(f"open_clip:{NAME}", str(oc_weights), preset_cfg)
    assert model_cfg.vision == init.cfg.vision and model_cfg.text == init.cfg.text
    assert model_cfg.decoder == preset_cfg.decoder and model_cfg.head == preset_cfg.head  # fresh parts

    train_cfg.batch_size, train_cfg.steps = 4, 1
    run = train(model_cfg, train_cfg, data=captioned, out_dir=tmp_path / "run", device="cpu", init=init)
    model = run.objective.model.eval()  # no step has run yet
    images = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    labels = ["cat", "dog", "red car"]
    templates = [lambda c: f"a photo of a {c}."]
    with torch.no_grad():
        probs = classify(model, images, build_classifier(model, labels, templates))
        text = reference.encode_text(open_clip.tokenize([t(c) for c in labels for t in templates]), normalize=True)
        logits = reference.logit_scale.exp() * reference.encode_image(images, normalize=True) @ text.T
        torch.testing.assert_close(probs, logits.softmax(dim=-1), atol=1e-5, rtol=0)
        # the EMA teacher starts as a copy of the initialised student
        for (name, t), s in zip(run.objective.teacher.visual.state_dict().items(), model.visual.state_dict().values()):
            assert torch.equal(t, s), name


def test_lock_text_keeps_the_text_tower_bit_identical_and_resume_keeps_it(oc_weights, captioned, tmp_path,
                                                                          monkeypatch, capsys):
    run = tmp_path / "run"
    code, err = cli(monkeypatch, capsys, "pretrain", "--init", f"open_clip:{NAME}", "--pretrained", oc_weights,
                    "--lock-text", "--data", captioned, "--steps", "2", "--batch-size", "4", "--warmup-steps", "1",
                    "--device", "cpu", "--out", run)
    assert code == 0, err
    assert "text=locked" in err
    settings = json.loads((run / "run.json").read_text())
    assert settings["init"] == f"open_clip:{NAME}" and settings["init_pretrained"] == str(oc_weights)
    assert settings["lock_text"] is True
    assert settings["model"]["vision"]["pre_norm"] and settings["model"]["vision"]["act"] == "quick_gelu"

    _, init = load_init(f"open_clip:{NAME}", str(oc_weights), load_preset("tiny")[0])
    start = init.state_dict()

    def check(weights):
        text = {k: v for k, v in weights.items() if k.startswith("text.")}
        assert text and all(torch.equal(v, start[k]) for k, v in text.items())
        assert not torch.equal(weights["visual.blocks.0.attn.qkv.weight"], start["visual.blocks.0.attn.qkv.weight"])

    check(load_tensors(run / "model.safetensors"))
    # --resume keeps the lock (the optimiser state only fits a locked text tower, too)
    code, err = cli(monkeypatch, capsys, "pretrain", "--resume", run, "--steps", "3", "--device", "cpu")
    assert code == 0, err
    check(load_tensors(run / "model.safetensors"))
    assert json.loads((run / "run.json").read_text())["lock_text"] is True


def test_init_usage_errors(oc_weights, tmp_path, monkeypatch, capsys):
    code, err = cli(monkeypatch, capsys, "pretrain", "--pretrained", oc_weights, "--out", tmp_path / "x")
    assert code == 2 and "--pretrained goes with --init" in err
    code, err = cli(monkeypatch, capsys, "pretrain", "--init", "open_clip:no-such-arch", "--out", tmp_path / "y")
    assert code == 2 and "unknown open_clip model" in err and err.count("\n") == 1
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
