"""`detailclip info`: what a model is, for the shipped model, a run folder and an open_clip model."""

from __future__ import annotations

import hashlib
import json

import torch
from typer.testing import CliRunner

from detailclip_cli import __version__
from detailclip_cli.cli import app
from detailclip_cli.core.store import info as info_mod
from detailclip_cli.core.store.lookup import resolve_model
from detailclip_cli.core.store.shipped import shipped_model_dir

runner = CliRunner()


def _info(*args):
    result = runner.invoke(app, ["info", *map(str, args)])
    return result


def test_info_of_the_shipped_model_as_json():
    result = _info("--format", "json")
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert record["kind"] == "model folder"
    assert record["parameters"]["total"] == 6_007_681 and record["parameters"]["decoder"] == 272_896
    assert record["architecture"]["vision"]["patch_size"] == 8
    weights = shipped_model_dir() / "model.safetensors"
    assert record["weights"]["sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert record["weights"]["tensors_by_dtype"] == {"F16": 125}  # shipped in half precision
    assert record["training"]["steps"] == 600 and record["training"]["seed"] == 0
    assert record["provenance"]["torch_version"].startswith("2.")
    assert record["detailclip_version"] == __version__  # of the package describing it


def test_info_of_a_run_folder_has_its_progress(run_dir, tmp_path):
    out = tmp_path / "info.json"
    result = _info(run_dir, "--format", "json", "--output", out)
    assert result.exit_code == 0, result.output
    record = json.loads(out.read_text())
    assert record["kind"] == "run"
    assert record["training"]["checkpoint_step"] == 4 and record["weights"]["step"] == 4
    assert record["training"]["last_logged"]["step"] == 4 and "loss" in record["training"]["last_logged"]
    assert record["training"]["data_report"]["samples"] == 2000
    # the table form names every part
    table = _info(run_dir)
    assert table.exit_code == 0
    for word in ("architecture", "parameters", "weights", "training", "provenance", "checkpoint_step"):
        assert word in table.stdout


def test_info_of_an_open_clip_model(tmp_path, monkeypatch):
    import open_clip

    cfg = {"embed_dim": 32,
           "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "head_width": 32, "patch_size": 8},
           "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 1}}
    (tmp_path / "detailclip-info-tiny.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(tmp_path / "detailclip-info-tiny.json")
    model = open_clip.create_model("detailclip-info-tiny")
    with torch.no_grad():  # weights that differ visibly from a fresh model's
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    weights = tmp_path / "w.pt"
    torch.save(model.state_dict(), weights)
    described = []

    def recording_resolve(*args, **kwargs):
        described.append(resolve_model(*args, **kwargs))
        return described[-1]

    monkeypatch.setattr(info_mod, "resolve_model", recording_resolve)
    result = _info("open_clip:detailclip-info-tiny", "--pretrained", weights, "--format", "json")
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert record["kind"] == "open_clip" and record["weights"] is None and record["training"] is None
    assert record["mechanisms"] == {"decoder": False, "distillation_head": False}
    assert record["parameters"]["total"] == sum(p.numel() for p in model.parameters())
    # The same weights, converted: the model described computes what open_clip's does.
    (ours,) = described
    assert record["parameters"] == ours.num_params()
    model.eval()
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    texts = ["a photo of a cat", "a diagram"]
    with torch.no_grad():
        torch.testing.assert_close(ours.encode_image(images, normalize=False), model.encode_image(images))
        torch.testing.assert_close(ours.encode_text(ours.tokenize(texts), normalize=False),
                                   model.encode_text(open_clip.tokenize(texts)))
        torch.testing.assert_close(ours.scale(), model.logit_scale.exp())


def test_info_of_something_that_is_not_a_model(tmp_path):
    result = _info(tmp_path)
    assert result.exit_code != 0
    assert "is not a model" in str(result.exception)
