"""`detailclip export`: open_clip and timm load the written folders and compute what our model does."""

from __future__ import annotations

import json
import sys

import open_clip
import pytest
import timm
import torch
from helpers import cli

from detailclip_cli.core.config import (
    DecoderConfig,
    HeadConfig,
    ModelConfig,
    TextConfig,
    TrainConfig,
    VisionConfig,
)
from detailclip_cli.core.model.detailclip import DetailCLIP
from detailclip_cli.core.store.export import ExportError, to_open_clip, to_timm
from detailclip_cli.core.store.io import save_model
from detailclip_cli.core.store.openclip import from_open_clip

# Our presets' layout (no ln_pre, eps 1e-6, GELU, biased patch embedding), and CLIP's.
LAYOUTS = {
    "preset": {},
    "clip": {"pre_norm": True, "norm_eps": 1e-5, "act": "quick_gelu"},
}


def tiny_config(**vision) -> ModelConfig:
    act = vision.get("act", "gelu")
    return ModelConfig(
        embed_dim=32,
        vision=VisionConfig(image_size=32, patch_size=8, width=64, depth=2, heads=2, **vision),
        text=TextConfig(context_length=16, width=64, heads=2, layers=2, act=act),
        decoder=DecoderConfig(width=32, depth=1, heads=2),
        head=HeadConfig(out_dim=64, hidden_dim=64, bottleneck_dim=32),
    )


def tiny_model(seed: int = 0, **vision) -> DetailCLIP:
    """A random tiny model whose patch bias, norms and text biases are visibly non-trivial."""
    torch.manual_seed(seed)
    model = DetailCLIP(tiny_config(**vision)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or ".norm" in name or "ln_" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model



def images(n: int = 3) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("layout", LAYOUTS)
def test_open_clip_round_trip(layout, tmp_path, monkeypatch, capsys):
    model = tiny_model(**LAYOUTS[layout])
    assert model.visual.patch_embed.proj.bias.abs().min() > 0
    save_model(model, tmp_path / "ours")
    out = tmp_path / "oc"
    code, err = cli(monkeypatch, capsys, "export", tmp_path / "ours", "--to", "open_clip", "--out", out)
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["open_clip_config.json", "open_clip_model.safetensors"]
    assert "local-dir:" in err and "max abs difference" in err

    theirs = open_clip.create_model(f"local-dir:{out}").eval()
    assert theirs.visual.conv1.bias is None  # the bias went into the position embedding
    tokenizer = open_clip.get_tokenizer(f"local-dir:{out}")
    texts = ["a photo of a cat", "two dogs on a red sofa", ""]
    assert torch.equal(tokenizer(texts), model.tokenize(texts))  # same BPE, same context length
    x = images()
    with torch.no_grad():
        torch.testing.assert_close(theirs.encode_image(x), model.encode_image(x, normalize=False), atol=1e-5, rtol=0)
        torch.testing.assert_close(theirs.encode_text(tokenizer(texts)),
                                   model.encode_text(model.tokenize(texts), normalize=False), atol=1e-5, rtol=0)
        assert theirs.logit_scale.exp().item() == pytest.approx(model.scale().item())

        # ... and back: the forward conversion gives a bias-free model with the same embeddings.
        again = from_open_clip(theirs)
        torch.testing.assert_close(again.encode_image(x), model.encode_image(x), atol=1e-5, rtol=0)


def test_open_clip_export_stores_the_clamped_logit_scale():
    model = tiny_model()
    with torch.no_grad():
        model.logit_scale.fill_(6.0)  # exp(6) = 403 > max_logit_scale 100
    _, state = to_open_clip(model)
    assert state["logit_scale"].exp().item() == pytest.approx(100.0)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_timm_export_gives_the_same_tokens(layout, tmp_path, monkeypatch, capsys):
    from safetensors.torch import load_file

    model = tiny_model(**LAYOUTS[layout])
    save_model(model, tmp_path / "ours")
    out = tmp_path / "timm"
    code, err = cli(monkeypatch, capsys, "export", tmp_path / "ours", "--to", "timm", "--out", out)
    assert code == 0, err
    cfg = json.loads((out / "config.json").read_text())
    theirs = timm.create_model(cfg["architecture"], pretrained=False, **cfg["model_args"]).eval()
    theirs.load_state_dict(load_file(str(out / "model.safetensors")))  # strict: every tensor has its place
    assert theirs.num_prefix_tokens == 1 and theirs.num_classes == 0
    x = images()
    with torch.no_grad():
        expected = model.visual(x)  # (B, 1 + L, D) final tokens, [CLS] first
        torch.testing.assert_close(theirs.forward_features(x), expected, atol=1e-5, rtol=0)
        # the Hub-style folder loads on its own too
        hub = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
        torch.testing.assert_close(hub.forward_features(x), expected, atol=1e-5, rtol=0)


def _run_folder_with_teacher(folder):
    """A run folder whose EMA teacher visibly differs from its student."""
    from detailclip_cli.core.method.objective import DetailCLIPObjective
    from detailclip_cli.core.store.run import RunFolder
    from detailclip_cli.core.training.optim import build_optimizer

    model = tiny_model()
    cfg = TrainConfig(steps=1, batch_size=2)
    objective = DetailCLIPObjective(model, cfg)
    with torch.no_grad():
        for p in objective.teacher.parameters():
            p.add_(0.05 * torch.randn_like(p))
    RunFolder(folder).save_checkpoint(objective, build_optimizer(objective, cfg), step=1)
    return model, objective.teacher


def test_teacher_weights_are_exported(tmp_path, monkeypatch, capsys):
    student, teacher = _run_folder_with_teacher(tmp_path / "run")
    out = tmp_path / "timm"
    code, err = cli(monkeypatch, capsys, "export", tmp_path / "run", "--to", "timm", "--out", out,
                    "--weights", "teacher")
    assert code == 0, err
    cfg = json.loads((out / "config.json").read_text())
    theirs = timm.create_model(cfg["architecture"], **cfg["model_args"]).eval()
    from safetensors.torch import load_file

    theirs.load_state_dict(load_file(str(out / "model.safetensors")))
    x = images(2)
    with torch.no_grad():
        torch.testing.assert_close(theirs.forward_features(x), teacher.visual(x), atol=1e-5, rtol=0)
        assert (theirs.forward_features(x) - student.visual(x)).abs().max() > 1e-3


def test_refusals_are_one_line(tmp_path, monkeypatch, capsys):
    conv = tiny_model(stem="conv")
    save_model(conv, tmp_path / "conv")
    save_model(tiny_model(), tmp_path / "saved")

    def refused(*args) -> str:
        code, err = cli(monkeypatch, capsys, "export", *args)
        assert code == 2 and err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
        return err

    for fmt in ("open_clip", "timm"):
        assert "conv stem" in refused(tmp_path / "conv", "--to", fmt, "--out", tmp_path / f"conv-{fmt}")
        assert not (tmp_path / f"conv-{fmt}").exists()
    assert "has no teacher" in refused(tmp_path / "saved", "--to", "timm", "--out", tmp_path / "t", "--weights",
                                       "teacher")
    # an existing, non-empty --out is left as it was unless --force, which touches only our files
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("keep me")
    (busy / "open_clip_config.json").write_text("{}")
    assert "not empty" in refused(tmp_path / "saved", "--to", "open_clip", "--out", busy)
    assert sorted(p.name for p in busy.iterdir()) == ["notes.txt", "open_clip_config.json"]
    assert (busy / "open_clip_config.json").read_text() == "{}"
    code, err = cli(monkeypatch, capsys, "export", tmp_path / "saved", "--to", "open_clip", "--out", busy, "--force")
    assert code == 0, err
    assert (busy / "notes.txt").read_text() == "keep me"
    assert "model_cfg" in json.loads((busy / "open_clip_config.json").read_text())
    assert "is a file" in refused(tmp_path / "saved", "--to", "timm", "--out", busy / "notes.txt")


def test_layouts_a_format_cannot_express_are_refused():
    mixed = DetailCLIP(ModelConfig.from_dict({**tiny_config().to_dict(), "text": {
        **tiny_config().to_dict()["text"], "act": "quick_gelu"}}))
    with pytest.raises(ExportError, match="one activation"):
        to_open_clip(mixed)
    odd_eps = DetailCLIP(tiny_config(norm_eps=1e-3))
    with pytest.raises(ExportError, match="eps is 0.001"):
        to_timm(odd_eps)
    to_open_clip(odd_eps)  # open_clip takes any eps (norm_kwargs)


def test_export_help_does_not_import_torch():
    import subprocess

    code = ("import sys; from typer.testing import CliRunner; from detailclip_cli.cli import app; "
            "CliRunner().invoke(app, ['export', '--help']); sys.exit('torch' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_patch_bias_is_folded_into_the_patch_positions():
    """open_clip's conv1 has no bias: pos[1:] += bias, the [CLS] position untouched."""
    model = tiny_model()
    _, state = to_open_clip(model)
    pos = model.visual.pos_embed[0].detach()  # (1 + L, D)
    bias = model.visual.patch_embed.proj.bias.detach()  # (D,)
    assert "visual.conv1.bias" not in state
    assert torch.equal(state["visual.positional_embedding"][0], pos[0])
    assert torch.equal(state["visual.positional_embedding"][1:], pos[1:] + bias)
    # timm's patch embedding is bias-free exactly when pre_norm is on
    assert "patch_embed.proj.bias" not in to_timm(tiny_model(pre_norm=True))[1]
    assert "patch_embed.proj.bias" in to_timm(model)[1]
