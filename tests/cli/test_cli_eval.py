"""`detailclip evaluate` and `detailclip plot` end to end."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from detailclip_cli.cli import app

runner = CliRunner()


@pytest.mark.slow
def test_evaluate_json_record(demo_cache, run_dir, tmp_path):
    out = tmp_path / "eval.json"
    result = runner.invoke(app, ["evaluate", "--model", str(run_dir), "--data", "demo", "--format", "json",
                                 "--probe-iters", "2", "--workers", "0", "--output", str(out), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    record = json.loads(out.read_text())
    assert record["dataset"] == "demo" and record["model"] == str(run_dir)
    assert record["data"]["layout"] == "demo" and record["data"]["split"] == "val"
    assert record["data"]["images"] == record["data"]["captions"] == 500 and record["skipped_images"] == 0
    m = record["metrics"]
    assert set(m) == {"zeroshot", "retrieval", "dense", "probe"}
    # The zero-shot figures are those `zero-shot --eval` reports for the same model and data.
    report = zero_shot_eval(run_dir)
    for key in ("top1", "top5", "mean_per_class_recall"):
        assert m["zeroshot"][key] == pytest.approx(report[key], abs=1e-6), key
    for direction in ("image_to_text", "text_to_image"):
        r1, r5, r10 = (m["retrieval"][f"{direction}_R@{k}"] for k in (1, 5, 10))
        assert r1 <= r5 <= r10, direction
    # The demo's masks: 0 = background, k + 1 = class k.
    assert m["dense"]["num_classes"] == len(demo_classes()) + 1 and 0.0 <= m["dense"]["mIoU"] <= 1.0
    assert m["dense"]["protocol"]["iterations"] == 2 and m["dense"]["protocol"]["inference"] == "slide"
    # k-NN accuracy is a count of the 500 validation images.
    hits = m["probe"]["knn"]["top1"] * 500
    assert hits == pytest.approx(round(hits), abs=1e-3)


def demo_classes() -> list[str]:
    from detailclip_cli.core.data import demo_root

    return json.loads((demo_root() / "classes.json").read_text())


def zero_shot_eval(model=None, data: str = "demo") -> dict:
    """`zero-shot --eval DATA --format json` (on the shipped model without ``model``)."""
    args = ["zero-shot", "--eval", data, "--format", "json", "--device", "cpu"]
    result = runner.invoke(app, args + (["--model", str(model)] if model else []))
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


@pytest.mark.slow
def test_evaluate_the_shipped_model(demo_cache):
    """No --model: the shipped model, whose zero-shot figure agrees with `zero-shot --eval`."""
    result = runner.invoke(app, ["evaluate", "--data", "demo", "--task", "zeroshot", "--format", "json",
                                 "--device", "cpu"])
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert record["model"].endswith("detailclip-tiny")
    top1 = record["metrics"]["zeroshot"]["top1"]
    assert top1 > 0.6  # 0.866 measured, chance 0.25
    assert top1 == pytest.approx(zero_shot_eval(data="demo")["top1"], abs=1e-6)


@pytest.mark.slow
def test_evaluate_table_single_task(demo_cache, run_dir):
    result = runner.invoke(app, ["evaluate", "--model", str(run_dir), "--task", "retrieval", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "image_to_text_R@1" in result.output and "mIoU" not in result.output


def test_evaluate_skips_what_the_data_cannot_serve(run_dir, tmp_path):
    # Captions but no labels in sub-folders and no masks: only retrieval can run.
    from PIL import Image

    for split in ("train", "val"):
        (tmp_path / split).mkdir()
        for i in range(4):
            Image.new("RGB", (40, 40), (60 * i, 20, 200)).save(tmp_path / split / f"{i}.png")
            (tmp_path / split / f"{i}.txt").write_text(f"picture number {i}")
    out = tmp_path / "r.json"
    result = runner.invoke(app, ["evaluate", "--model", str(run_dir), "--data", str(tmp_path), "--format", "json",
                                 "--output", str(out), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    record = json.loads(out.read_text())
    assert set(record["metrics"]) == {"retrieval"}
    assert set(record["skipped"]) == {"zeroshot", "dense", "probe"}


def write_metrics(path, losses):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"step": i + 1, "loss": v, "clip": v / 2, "lr": 1e-3}) + "\n"
                            for i, v in enumerate(losses)))


def test_plot_two_runs(tmp_path):
    a, b = tmp_path / "a" / "metrics.jsonl", tmp_path / "b" / "metrics.jsonl"
    write_metrics(a, [3.0, 2.0, 1.5])
    write_metrics(b, [3.0, 2.5, 2.2])
    out = tmp_path / "curves.png"
    result = runner.invoke(app, ["plot", str(a), str(b.parent), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert out.stat().st_size > 1000 and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_training_curves_figure_axes():
    from detailclip_cli.plots import training_curves_figure

    runs = {"a": [{"step": 1, "loss": 2.0, "lr": 0.1, "elapsed_s": 3.0}, {"step": 2, "loss": 1.0, "lr": 0.2}],
            "b": [{"step": 1, "loss": 2.5, "rec": 0.4}]}
    fig = training_curves_figure(runs)
    titled = [ax for ax in fig.axes if ax.get_title()]
    assert [ax.get_title() for ax in titled] == ["loss", "rec", "lr"]
    assert len(titled[0].lines) == 2 and len(titled[1].lines) == 1


def test_plot_rejects_a_file_that_is_not_metrics(tmp_path):
    bad = tmp_path / "m.jsonl"
    bad.write_text("not json\n")
    result = runner.invoke(app, ["plot", str(bad), "--out", str(tmp_path / "x.png")])
    assert result.exit_code != 0
    assert "is not a JSON line" in str(result.exception)


# ------------------------------------------------------------------ the distributed layouts, end to end

import benchmark_minis as minis


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """A random model of the tiny preset shrunk to depth 2 (64 px, patch 8; the full tokenizer)."""
    import torch

    from detailclip_cli.core.config import load_preset
    from detailclip_cli.core.model.detailclip import DetailCLIP
    from detailclip_cli.core.store.io import save_model

    cfg, _ = load_preset("tiny")
    cfg.vision.depth = 2
    torch.manual_seed(0)
    return save_model(DetailCLIP(cfg).eval(), tmp_path_factory.mktemp("tiny") / "model")


def evaluate_json(model, data, *args) -> tuple[int, dict | None, str]:
    result = runner.invoke(app, ["evaluate", "--model", str(model), "--data", str(data), "--format", "json",
                                 "--device", "cpu", "--workers", "0", *map(str, args)])
    record = json.loads(result.stdout) if result.stdout.strip().startswith("{") else None
    return result.exit_code, record, result.stderr


LAYOUT_CASES = {
    # layout: (builder, tasks run, tasks skipped, images, captions)
    "ade20k": (minis.ade20k, {"dense"}, {"zeroshot", "retrieval", "probe"}, 6, 0),
    "voc": (minis.voc, {"dense"}, {"zeroshot", "retrieval", "probe"}, 6, 0),
    "cityscapes": (minis.cityscapes, {"dense"}, {"zeroshot", "retrieval", "probe"}, 6, 0),
    "coco": (minis.coco, {"retrieval"}, {"zeroshot", "dense", "probe"}, 4, 20),
    "karpathy": (minis.karpathy, {"retrieval"}, {"zeroshot", "dense", "probe"}, 3, 15),
    "clip_benchmark": (minis.colour_clip_benchmark, {"zeroshot"}, {"retrieval", "dense", "probe"}, 7, 0),
    "imagenet": (minis.imagenet, {"zeroshot", "probe"}, {"retrieval", "dense"}, 6, 0),
}


@pytest.mark.parametrize("layout", [
    pytest.param(name, marks=pytest.mark.slow) if name in ("ade20k", "voc", "cityscapes", "imagenet") else name
    for name in LAYOUT_CASES])
def test_each_layout_through_evaluate(tiny_model, tmp_path, layout):
    build, ran, skipped, images, captions = LAYOUT_CASES[layout]
    build(tmp_path)
    templates = tmp_path / "one.txt"
    templates.write_text("a photo of a {}.\n")  # ImageNet: 1000 prompts, not 80000, on a tiny model
    code, record, err = evaluate_json(tiny_model, tmp_path, "--probe-iters", "3", "--probe-batch", "2",
                                      *(["--templates", templates] if layout == "imagenet" else []))
    assert code == 0, err
    assert record["data"]["layout"] == layout
    assert (record["data"]["images"], record["data"]["captions"]) == (images, captions)
    assert set(record["metrics"]) == ran and set(record["skipped"]) == skipped
    for task, metrics in record["metrics"].items():
        protocol = metrics.get("protocol") or metrics["knn"]["protocol"]
        assert protocol, task
    if "retrieval" in ran:
        r = record["metrics"]["retrieval"]
        assert r["protocol"]["captions"] == captions and r["text_to_image_R@5"] == 1.0  # at most 3 other images
    if "dense" in ran:
        assert record["train"]["images"] == 6 and 0.0 <= record["metrics"]["dense"]["mIoU"] <= 1.0


def test_layout_forced_and_no_match(tiny_model, tmp_path, monkeypatch, capsys):
    from helpers import cli

    minis.coco(tmp_path)
    code, err = cli(monkeypatch, capsys, "evaluate", "--model", tiny_model, "--data", tmp_path, "--layout", "voc")
    assert code == 2 and err.count("error:") == 1 and "is not in the voc layout" in err and "Traceback" not in err
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("no images")
    code, err = cli(monkeypatch, capsys, "evaluate", "--model", tiny_model, "--data", empty)
    assert code == 2 and err.count("error:") == 1 and "matches no evaluation layout" in err and "ade20k: " in err


def test_unreadable_images_are_skipped_and_counted(tiny_model, tmp_path, monkeypatch, capsys):
    from helpers import cli

    minis.coco(tmp_path)
    (tmp_path / "val2017" / "000000000002.jpg").write_bytes(b"not a jpeg")
    code, record, err = evaluate_json(tiny_model, tmp_path)
    assert code == 1, err  # the result is written, and the exit code says something was skipped
    assert record["skipped_images"] == 1 and "000000000002.jpg" in record["skipped_examples"][0]
    assert record["data"]["images_evaluated"] == 3 and record["metrics"]["retrieval"]["protocol"]["captions"] == 15
    code, err = cli(monkeypatch, capsys, "evaluate", "--model", tiny_model, "--data", tmp_path, "--strict",
                    "--workers", "0", "--format", "json")
    assert code == 1 and "000000000002.jpg" in err and err.strip().splitlines()[-1].startswith("error:")


@pytest.mark.slow
def test_zero_shot_eval_skips_unreadable_images(tiny_model, tmp_path):
    minis.imagenet(tmp_path, per_class=2)
    bad = next((tmp_path / "val" / "n01440764").iterdir())
    bad.write_bytes(b"")
    templates = tmp_path / "one.txt"
    templates.write_text("a photo of a {}.\n")
    args = ["zero-shot", "--eval", str(tmp_path), "--model", str(tiny_model), "--templates", str(templates),
            "--format", "json", "--device", "cpu"]
    result = runner.invoke(app, args)
    assert result.exit_code == 1
    doc = json.loads(result.stdout)
    assert doc["layout"] == "imagenet" and doc["skipped_images"] == 1 and doc["num_images"] == 5
    assert runner.invoke(app, args + ["--strict"]).exit_code == 1


@pytest.mark.slow
def test_clip_benchmark_from_the_demo_matches_zero_shot_eval(demo_cache, tmp_path):
    """The demo's validation split written as clip_benchmark writes it scores as `zero-shot --eval demo`."""
    from detailclip_cli.core.data import demo_root

    classes = demo_classes()
    samples = [(image.read_bytes(), "png", classes.index(image.parent.name))
               for image in sorted((demo_root() / "val").glob("*/*.png")) if not image.name.endswith(".mask.png")]
    from detailclip_cli.core.data.demo import demo_templates

    minis.clip_benchmark(tmp_path, samples, classes, [t.replace("{}", "{c}") for t in demo_templates()],
                         per_shard=128)
    result = runner.invoke(app, ["evaluate", "--data", str(tmp_path), "--task", "zeroshot", "--format", "json",
                                 "--device", "cpu", "--workers", "0"])
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert record["data"]["layout"] == "clip_benchmark" and record["data"]["images"] == len(samples)
    reference = zero_shot_eval()
    assert reference["num_images"] == len(samples)
    assert record["metrics"]["zeroshot"]["top1"] == pytest.approx(reference["top1"], abs=1e-9)
