"""The two experiment scripts of ``examples/``: their plans, resuming, and the tables they write.

The runs themselves are ``detailclip distill`` / ``pretrain`` and ``evaluate`` commands tested
elsewhere; here the scripts' own logic is checked on hand-made records.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def load(name: str):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def selfsup():
    return load("experiment_selfsup")


@pytest.fixture(scope="module")
def methods():
    return load("experiment_methods")


def test_selfsup_plan_covers_the_four_questions_at_the_same_images_seen(selfsup):
    runs = selfsup.plan(9600, [8, 32, 128], 32)
    assert len(runs) == 24 and len({selfsup.run_key(r) for r in runs}) == 24
    batch = [r for r in runs if r["group"] == "batch"]
    assert {(r["method"], r["batch_size"], r["steps"]) for r in batch} == {
        (m, b, 9600 // b) for m in selfsup.METHODS for b in (8, 32, 128)}
    augment = {(r["method"], r["variant"]): r["train"] for r in runs if r["group"] == "augment"}
    assert augment[("byol", "no colour")] == {"color_jitter": 0.0, "grayscale": 0.0}
    assert augment[("simclr", "no crop")] == {"crop_scale": [1.0, 1.0]}
    assert [(r["method"], r["local_crops"]) for r in runs if r["group"] == "local"] == [("dino", 0), ("ibot", 0)]
    collapse = {r["variant"]: r["train"] for r in runs if r["group"] == "collapse"}
    assert collapse == {"no centring": {"center_momentum": 1.0},
                        "no EMA": {"momentum_base": 0.0, "momentum_final": 0.0}}
    assert all(r["steps"] == 300 for r in runs if r["group"] != "batch")


def record(run: dict, knn: float, seconds: float = 60.0) -> dict:
    curve = [{"step": s, "loss": 1.0, "spread": 0.1 * s, "teacher_entropy": 2.0 + s} for s in (1, 2)]
    return {**run, "seed": 0, "preset": "tiny", "data": "demo", "knn_top1": knn, "logistic_top1": knn,
            "seconds": seconds, "curve": curve}


def test_selfsup_summary_tables_and_charts(selfsup, tmp_path):
    runs = selfsup.plan(64, [8, 32], 32)
    records = [record(r, knn=0.25 + 0.01 * i) for i, r in enumerate(runs)]
    selfsup.summarise(records, tmp_path, images=64, base_batch=32)
    text = (tmp_path / "results.md").read_text()
    assert f"{len(runs)} runs, {len(runs)} minutes" in text
    # batch group: simclr is the first method, batches 8 then 32
    assert "| simclr | 0.250 | 0.260 |" in text
    assert "| dino | no centring | 32 |" in text and "| 0.2000 | 4.000 | 1.0 |" in text
    assert (tmp_path / "batch.png").stat().st_size > 0
    assert (tmp_path / "collapse.png").stat().st_size > 0


def test_selfsup_resumes_without_rerunning_finished_runs(selfsup, tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    runs = selfsup.plan(64, [8, 32, 128], 32)
    done, missing = runs[:-1], runs[-1]
    (out / "runs.jsonl").write_text("".join(json.dumps(record(r, 0.5)) + "\n" for r in done))
    executed = []

    def execute(run, **kwargs):
        executed.append(selfsup.run_key(run))
        return record(run, 0.75)

    monkeypatch.setattr(selfsup, "execute", execute)
    monkeypatch.setattr(sys, "argv", ["experiment_selfsup.py", "--out", str(out), "--images", "64"])
    selfsup.main()
    assert executed == [selfsup.run_key(missing)]
    lines = (out / "runs.jsonl").read_text().splitlines()
    assert len(lines) == len(runs) and json.loads(lines[-1])["knn_top1"] == 0.75


def test_methods_summary_is_mean_and_sample_std_skipping_nulls(methods, tmp_path):
    def rec(dense, per_step):
        r = {group: {key: 0.5} for _, group, key in methods.METRICS}
        r.update(arm="CLIP", dense={"mIoU": dense}, time={"per_step": per_step})
        return r

    records = [rec(0.4, 1.0), rec(0.5, None), rec(0.6, 2.0)]  # a step time recorded as null
    methods.summarise(records, tmp_path, title="t")
    row = next(line for line in (tmp_path / "results.md").read_text().splitlines() if line.startswith("| CLIP |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    labels = [m[0] for m in methods.METRICS]
    assert cells[1 + labels.index("dense mIoU")] == "0.500 ± 0.100"
    assert cells[1 + labels.index("zero-shot top-1")] == "0.500 ± 0.000"
    assert cells[1 + labels.index("s / step")] == "1.50 ± 0.71"  # the null left out of the mean
    assert cells[-1] == "3"
    assert (tmp_path / "results.png").stat().st_size > 0


def test_selfsup_runs_only_the_groups_and_methods_asked(selfsup, tmp_path, monkeypatch):
    executed = []

    def execute(run, **kwargs):
        executed.append((run["group"], run["method"], run["batch_size"], run["steps"]))
        return record(run, 0.5)

    monkeypatch.setattr(selfsup, "execute", execute)
    monkeypatch.setattr(sys, "argv", ["experiment_selfsup.py", "--out", str(tmp_path), "--images", "96000",
                                      "--groups", "batch", "--batches", "32", "--methods", "simclr"])
    selfsup.main()
    assert executed == [("batch", "simclr", 32, 3000)]
    monkeypatch.setattr(sys, "argv", ["experiment_selfsup.py", "--out", str(tmp_path), "--methods", "mocov3"])
    with pytest.raises(SystemExit):
        selfsup.main()
