"""`detailclip bench`: the record's structure and the invariants its figures must satisfy."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
import torch
from torch.profiler import ProfilerActivity, profile
from typer.testing import CliRunner

from detailclip_cli.cli import app
from detailclip_cli.core.config import ConfigError
from detailclip_cli.core.method.stages import PROFILER_PREFIX
from detailclip_cli.tools.bench import (SECTIONS, STAGES, STARTUP_COMMANDS, TARGETS, BenchConfig, check_targets,
                                        parse_sections, run_bench, staged_step)
from detailclip_cli.tools.costs import STEP_STAGES, TrainStep, interleaved_runs, spread, variant_configs


def _numbers(record, path=()):
    """(path, value) of every number in a nested record."""
    if isinstance(record, dict):
        for key, value in record.items():
            yield from _numbers(value, (*path, str(key)))
    elif isinstance(record, list):
        for i, value in enumerate(record):
            yield from _numbers(value, (*path, str(i)))
    elif isinstance(record, (int, float)) and not isinstance(record, bool):
        yield ".".join(path), record


@pytest.fixture(scope="module")
def record(demo_cache):
    cfg = BenchConfig(preset="tiny", batch_size=4, device="cpu", repeats=2, warmup=0, workers=(0, 1),
                      matmul_size=256, bulk_images=4)
    return run_bench(cfg)


@pytest.mark.slow
def test_record_has_every_section_and_is_plain_json(record):
    assert set(SECTIONS) <= set(record)
    assert record["preset"] == "tiny" and record["batch_size"] == 4 and record["device"] == "cpu"
    assert record["repeats"] == 2 and record["bulk_images"] == 4
    assert json.loads(json.dumps(record)) == record
    assert set(record["targets"]) == set(TARGETS)
    for target in record["targets"].values():
        assert isinstance(target["met"], bool) and target["value"] is not None


@pytest.mark.slow
def test_times_rates_and_ratios_are_positive(record):
    for path, value in _numbers({section: record[section] for section in SECTIONS}):
        if path == "scores.overhead" or path.endswith(("max_abs_diff", "workers")) or "extra_s" in path:
            continue  # an overhead may be a hair below zero; workers may be 0; a command may beat `import torch`
        assert value > 0, path


@pytest.mark.slow
def test_flops_invariants(record):
    f = record["flops"]
    assert f["detailclip_gflops"] > f["clip_gflops"]
    assert f["detailclip_vs_clip"] == pytest.approx(f["detailclip_gflops"] / f["clip_gflops"], rel=1e-2)
    rows = record["keep"]["rows"]
    assert [r["keep_ratio"] for r in rows] == [1.0, 0.5, 0.25]
    # tiny: 8x8 patches in 16 cells of 2x2; floor(16 r) + 1 cells kept (the authors' count)
    assert [r["tokens"] for r in rows] == [64, 36, 20]
    assert rows[0]["gflops"] > rows[1]["gflops"] > rows[2]["gflops"]
    assert rows[0]["speedup"] == 1.0


@pytest.mark.slow
def test_split_covers_every_stage_and_sums_near_the_step(record):
    split = record["split"]
    assert list(split["stages_s"]) == list(STAGES)  # DetailCLIP defaults run every stage
    assert sum(split["fraction"].values()) == pytest.approx(1.0, abs=1e-2)
    assert split["sum_s"] == pytest.approx(sum(split["stages_s"].values()), rel=1e-2)
    assert split["step_s"] == record["train"]["detailclip_step_s"]  # compared with the timed step itself
    assert split["sum_vs_step"] == pytest.approx(split["sum_s"] / split["step_s"], rel=1e-2)
    # How the split's sum compares with the separately timed step is a measurement (bench reports
    # it), not a contract: two timings on shared cores differ by more than any honest bound (a
    # clean-clone CI run measured 0.19). test_split_times_the_objectives_own_stages checks that
    # the stages cover the whole of their own step.


def _tiny_step(seed: int = 0) -> TrainStep:
    return TrainStep(*variant_configs("tiny", "detailclip"), batch_size=2, device=torch.device("cpu"), seed=seed)


def test_split_times_the_objectives_own_stages():
    """The split's stages are the ranges the objective's forward records for a profiler (plus the
    step's own), they account for the whole step, and observing them leaves the step unchanged."""
    plain, observed = _tiny_step(), _tiny_step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        expected_loss = plain()
    recorded = {e.name[len(PROFILER_PREFIX):] for e in prof.events() if e.name.startswith(PROFILER_PREFIX)}
    assert recorded == {"teacher", "student_encoder", "text_tower", "decoder", "heads_losses"}

    t0 = time.perf_counter()
    seconds, loss = staged_step(observed)
    wall = time.perf_counter() - t0
    assert set(seconds) == recorded | set(STEP_STAGES)
    assert list(seconds)[:3] == ["teacher", "student_encoder", "text_tower"]  # the objective's order
    assert all(v > 0 for v in seconds.values()), seconds
    assert 0.9 * wall < sum(seconds.values()) <= wall  # no part of the step goes untimed
    assert loss == expected_loss  # the real forward and backward, bit for bit
    for p, q in zip(plain.objective.parameters(), observed.objective.parameters()):
        assert torch.equal(p, q)


@pytest.mark.slow
def test_memory_figures_are_consistent(record):
    m = record["memory"]
    for variant in ("clip", "detailclip"):
        assert m[variant]["model_mib"] > 0 and m[variant]["step_peak_mib"] > 0
        assert m[variant]["method"].startswith("ru_maxrss")  # CPU: the process's peak RSS
    assert m["detailclip_vs_clip"] == pytest.approx(m["detailclip"]["step_peak_mib"] / m["clip"]["step_peak_mib"],
                                                    rel=1e-2)


@pytest.mark.slow
def test_inference_twin_encodes_like_open_clip(record):
    assert record["inference"]["max_abs_diff"] < 1e-4
    assert {r["workers"] for r in record["data"]["rows"]} == {0, 1}


def test_sections_are_parsed_and_checked():
    assert parse_sections(["train,keep", "flops", "keep"]) == ("train", "keep", "flops")
    assert parse_sections(None) == SECTIONS
    with pytest.raises(ConfigError, match="unknown bench section"):
        BenchConfig(sections=("train", "speed")).validate()


def test_cli_json_parses_and_table_prints(demo_cache):
    runner = CliRunner()
    args = ["bench", "--preset", "tiny", "--batch-size", "2", "--repeats", "1", "--warmup", "0", "--device", "cpu",
            "--sections", "train,scores"]
    result = runner.invoke(app, [*args, "--format", "json"])
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert {"train", "scores", "targets"} <= set(record) and "keep" not in record
    assert set(record["targets"]) == {"scores_overhead"}
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "DetailCLIP step" in result.stdout and "targets" in result.stdout


@pytest.mark.slow
def test_cli_bad_section_is_one_line_and_exit_2():
    result = subprocess.run([sys.executable, "-m", "detailclip_cli", "bench", "--sections", "speed"],
                            capture_output=True, text=True)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert "unknown bench section" in result.stderr


def test_spread_is_the_median_quartiles_and_range():
    assert spread([5.0, 1.0, 3.0, 2.0, 4.0]) == {"median": 3.0, "min": 1.0, "q1": 2.0, "q3": 4.0, "max": 5.0, "n": 5}
    assert spread([2.0, 1.0]) == {"median": 1.5, "min": 1.0, "q1": 1.25, "q3": 1.75, "max": 2.0, "n": 2}
    assert spread([0.25]) == {"median": 0.25, "min": 0.25, "q1": 0.25, "q3": 0.25, "max": 0.25, "n": 1}
    with pytest.raises(ValueError):
        spread([])


def test_interleaved_runs_time_one_of_each_per_round():
    calls = []
    times = interleaved_runs({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")},
                             repeats=3, warmup=1, device=torch.device("cpu"))
    assert calls == ["a", "b"] * 4  # one warm-up round, then three timed ones, back to back
    assert set(times) == {"a", "b"} and all(len(t) == 3 and min(t) >= 0 for t in times.values())


def test_targets_are_judged_on_the_median_and_show_the_range():
    record = {"flops": {"machinery_overhead": 1.05, "detailclip_mfu": 0.48,
                        "spread": {"machinery_overhead": spread([1.0, 1.05, 1.3]),
                                   "detailclip_mfu": spread([0.4, 0.48, 0.55])}}}
    targets = check_targets(record)
    assert set(targets) == {"machinery_overhead", "mfu"}
    # one run above the bound does not fail the median; one run above 0.5 MFU does not pass it
    assert targets["machinery_overhead"]["met"] and targets["machinery_overhead"]["range"] == [1.0, 1.3]
    assert not targets["mfu"]["met"] and targets["mfu"]["range"] == [0.4, 0.55]


@pytest.mark.slow
def test_every_timed_figure_has_its_spread(record):
    """Each figure with a spread: n = repeats, min <= median <= max, and the median is the figure shown."""
    shown = {("train", "detailclip_step_s"), ("train", "detailclip_vs_clip"), ("flops", "machinery_overhead"),
             ("flops", "detailclip_mfu"), ("bulk", "ours_vs_open_clip"), ("startup", "zero_shot_extra_s"),
             ("startup", "import_torch_s"), ("inference", "ours_vs_open_clip"), ("scores", "ratio")}
    for section in SECTIONS:
        if section == "memory":
            continue  # one measurement in a fresh process, not repeated
        spreads = record[section]["spread"]
        assert spreads, section
        for key, sp in spreads.items():
            assert sp["n"] == 2 and sp["min"] <= sp["q1"] <= sp["median"] <= sp["q3"] <= sp["max"], (section, key)
    for section, key in shown:
        assert record[section][key] == record[section]["spread"][key]["median"], (section, key)
    for stage in record["split"]["stages_s"]:
        assert record["split"]["stages_s"][stage] == record["split"]["spread"][stage]["median"]
    assert 0 <= record["split"]["untimed_fraction"] < 0.1  # the stopwatch covers a staged step


@pytest.mark.slow
def test_startup_times_each_command_against_import_torch(record):
    s = record["startup"]
    for name in ("help", *STARTUP_COMMANDS):
        assert s[f"{name}_s"] > 0 and s[f"{name}_vs_import_torch"] > 0, name
    for name in STARTUP_COMMANDS:
        lo, hi = s["spread"][f"{name}_extra_s"]["min"], s["spread"][f"{name}_extra_s"]["max"]
        assert lo <= s[f"{name}_extra_s"] <= hi
    assert s["python_s"] < s["import_torch_s"]  # the floor is below the baseline


@pytest.mark.slow
def test_bulk_zero_shot_and_loader_per_core(record):
    b = record["bulk"]
    assert b["images"] == 4 and b["workers"] == 0  # default_workers: none for a handful of images
    # Demo images are the model's size: both pipelines read the same pixels and agree on every image.
    assert b["top1_agreement"] == 1.0
    assert b["ours_vs_open_clip"] == pytest.approx(b["spread"]["ours_vs_open_clip"]["median"])
    d = record["data"]
    per_core = d["loader_per_core"]
    assert per_core["image_size"] == 64 and per_core["ours_two_views"] > 0
    assert d["cores_per_device"] == pytest.approx(d["step_images_per_s"] / per_core["ours_two_views"], rel=1e-3)
