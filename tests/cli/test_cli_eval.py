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
                                 "--probe-epochs", "1", "--output", str(out), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    record = json.loads(out.read_text())
    assert record["dataset"] == "demo" and record["model"] == str(run_dir)
    m = record["metrics"]
    assert set(m) == {"zeroshot", "retrieval", "dense", "probe"}
    # The zero-shot figures are those `zero-shot --eval` reports for the same model and data.
    report = zero_shot_eval(run_dir)
    for key in ("top1", "top5", "mean_per_class_recall"):
        assert m["zeroshot"][key] == pytest.approx(report[key], abs=1e-6), key
    for direction in ("image_to_text", "text_to_image"):
        r1, r5, r10 = (m["retrieval"][f"{direction}_R@{k}"] for k in (1, 5, 10))
        assert r1 <= r5 <= r10, direction
    assert m["dense"]["num_classes"] == 9 and 0.0 <= m["dense"]["mIoU"] <= 1.0
    # k-NN accuracy is a count of the 500 validation images.
    hits = m["probe"]["knn_top1"] * 500
    assert hits == pytest.approx(round(hits), abs=1e-3)


def zero_shot_eval(model=None) -> dict:
    """`zero-shot --eval demo --format json` (on the shipped model without ``model``)."""
    args = ["zero-shot", "--eval", "demo", "--format", "json", "--device", "cpu"]
    result = runner.invoke(app, args + (["--model", str(model)] if model else []))
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


@pytest.mark.slow
def test_evaluate_the_shipped_model(demo_cache):
    """No --model: the shipped model, whose zero-shot figure agrees with `zero-shot --eval demo`."""
    result = runner.invoke(app, ["evaluate", "--data", "demo", "--task", "zeroshot", "--format", "json",
                                 "--device", "cpu"])
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert record["model"].endswith("detailclip-tiny")
    top1 = record["metrics"]["zeroshot"]["top1"]
    assert top1 > 0.6  # 0.890 measured, chance 0.125
    assert top1 == pytest.approx(zero_shot_eval()["top1"], abs=1e-6)


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
