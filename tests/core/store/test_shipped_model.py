"""The shipped model (package data): small, loadable by every command's default, and trained."""

from __future__ import annotations

import json

import pytest

from detailclip_cli.core.store.lookup import resolve_model
from detailclip_cli.core.store.shipped import shipped_model_dir


def test_shipped_model_is_small_and_loads():
    folder = shipped_model_dir()
    size = sum(p.stat().st_size for p in folder.iterdir())
    assert size < 20e6, size
    model = resolve_model(None)
    assert model.decoder is not None  # reconstruct works on it
    assert model.cfg.vision.image_size == 64 and model.cfg.text.vocab_size == 49408  # full vocabulary
    run = json.loads((folder / "run.json").read_text())
    assert run["train"]["steps"] == 600 and run["train"]["seed"] == 0 and run["data"] == "demo"


@pytest.mark.slow
def test_shipped_model_is_trained(demo_cache):
    """`zero-shot --eval demo` on the shipped model: far above chance on the demo validation split.

    The classes are demo v6's four patterns, 125 validation images each: chance is 1/4; 86.6 %
    top-1 was measured. A hand count backs the command's figure: each validation image, found
    from the generator's own records, classified alone and compared with the pattern it was
    painted with.
    """
    from typer.testing import CliRunner

    from detailclip_cli.cli import app
    from detailclip_cli.core.data import demo_root
    from detailclip_cli.core.use.batching import load_images
    from detailclip_cli.core.use.templates import resolve_templates
    from detailclip_cli.core.use.zeroshot import build_classifier, classify

    result = CliRunner().invoke(app, ["zero-shot", "--eval", "demo", "--format", "json", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    records = [json.loads(line) for line in (demo_root() / "val.jsonl").read_text().splitlines()]
    assert report["num_images"] == len(records) == 500
    assert [r["support"] for r in report["per_class"]] == [
        sum(rec["label"] == c for rec in records) for c in report["classes"]]

    model = resolve_model(None)
    classes = report["classes"]
    classifier = build_classifier(model, classes, resolve_templates(None, data="demo"))
    correct = dict.fromkeys(classes, 0)
    for rec in records:
        image = load_images([demo_root() / "val" / rec["label"] / f"{rec['id']}.png"], model)
        predicted = classes[int(classify(model, image, classifier).argmax())]
        correct[rec["label"]] += predicted == rec["label"]
    assert [r["correct"] for r in report["per_class"]] == [correct[c] for c in classes]
    assert report["top1"] == pytest.approx(sum(correct.values()) / 500, abs=1e-12)
    assert report["top1"] > 0.6, report["top1"]  # 0.866 measured
    assert report["mean_per_class_recall"] > 0.6, report["mean_per_class_recall"]


@pytest.mark.parametrize("command", [["attn-map", "--format", "json"], ["reconstruct", "--format", "json"]])
def test_commands_default_to_the_shipped_model(demo_cache, command, tmp_path):
    from typer.testing import CliRunner

    from detailclip_cli.cli import app
    from detailclip_cli.core.data import demo_root, is_image_file

    image = sorted(p for p in (demo_root() / "val" / "striped").iterdir() if is_image_file(p))[0]
    result = CliRunner().invoke(app, [*command, str(image), "--out", str(tmp_path), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "detailclip-tiny" in result.output
