"""The model shipped in assets/: small, loadable by every command's default, and trained."""

from __future__ import annotations

import json

import pytest

from detailclip_cli.core.inference import resolve_model, shipped_model_dir


def test_shipped_model_is_small_and_loads():
    folder = shipped_model_dir()
    size = sum(p.stat().st_size for p in folder.iterdir())
    assert size < 20e6, size
    model = resolve_model(None)
    assert model.decoder is not None  # reconstruct works on it
    assert model.cfg.vision.image_size == 64 and model.cfg.text.vocab_size == 49408  # full vocabulary
    run = json.loads((folder / "run.json").read_text())
    assert run["train"]["steps"] == 1500 and run["train"]["seed"] == 0 and run["data"] == "demo"


def test_shipped_model_is_trained(demo_cache):
    """Zero-shot on the demo validation split, over the colour named in each caption.

    The shipped model reads colours far above chance (chance 1/8); see the README for why its
    zero-shot digit accuracy is still at chance and what that says about the demo budget.
    """
    from detailclip_cli.core.data import demo_root
    from detailclip_cli.core.inference import build_classifier, classify, iter_image_batches, resolve_templates

    root = demo_root()
    records = [json.loads(line) for line in (root / "val.jsonl").read_text().splitlines()]
    colours = sorted({r["colour"] for r in records})
    paths = [root / "val" / r["label"] / f"{r['id']}.png" for r in records]
    truth = {p: r["colour"] for p, r in zip(paths, records)}
    model = resolve_model(None)
    v = model.cfg.vision
    templates_file = demo_root().parent / "colour_templates.txt"
    templates_file.write_text("a {} handwritten digit.\na digit written in {}.\n")
    classifier = build_classifier(model, colours, resolve_templates(str(templates_file)))
    correct = total = 0
    for batch in iter_image_batches(paths, image_size=v.image_size, mean=v.mean, std=v.std, batch_size=100):
        pred = classify(model, batch.images, classifier).argmax(1).tolist()
        correct += sum(colours[k] == truth[p] for p, k in zip(batch.paths, pred))
        total += len(pred)
    assert total == 500
    assert correct / total > 0.6, correct / total  # 0.914 measured; chance 0.125


@pytest.mark.parametrize("command", [["attn-map", "--format", "json"], ["reconstruct", "--format", "json"]])
def test_commands_default_to_the_shipped_model(demo_cache, command, tmp_path):
    from typer.testing import CliRunner

    from detailclip_cli.cli import app
    from detailclip_cli.core.data import demo_root, is_image_file

    image = sorted(p for p in (demo_root() / "val" / "seven").iterdir() if is_image_file(p))[0]
    result = CliRunner().invoke(app, [*command, str(image), "--out", str(tmp_path), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "assets/detailclip-tiny" in result.output
