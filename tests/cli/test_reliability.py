"""Crashes and interruptions: SIGKILL at random moments, a full disk, a torn metrics line."""

from __future__ import annotations

import errno
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from detailclip_cli.core.config import TrainConfig, load_preset
from detailclip_cli.core.store import checkpoint as checkpoint_mod
from detailclip_cli.core.store import run as run_mod
from detailclip_cli.core.store.io import MODEL_FILE, load_tensors
from detailclip_cli.core.store.run import RunFolder
from detailclip_cli.core.training.pretrain import train
from detailclip_cli.errors import TrainingError

STEPS = 12


@pytest.fixture
def config_file(tmp_path) -> Path:
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps({
        "preset": "tiny",
        "model": {"vision": {"depth": 1, "width": 48, "heads": 2}, "text": {"layers": 1},
                  "head": {"out_dim": 64, "hidden_dim": 64, "bottleneck_dim": 32}},
        "train": {"batch_size": 4, "log_every": 1, "save_every": 1, "warmup_steps": 2, "seed": 5},
    }))
    return path


def _start(args: list[str], log: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # the same thread count in every run: same arithmetic
    with open(log, "w") as stderr:  # a file, not a pipe: a pipe nobody reads could stall the run
        return subprocess.Popen([sys.executable, "-m", "detailclip_cli", "pretrain", *args], stderr=stderr,
                                stdout=subprocess.DEVNULL, env=env)


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_tensors(folder / MODEL_FILE)


# The moments of a step a kill lands in, each recognised from the run folder (save_every is 1):
# "logged": step t's metrics line is written, its checkpoint may be being written;
# "staging": step t's checkpoint is being written (its staging folder exists);
# "saved": step t's checkpoint is complete, step t + 1 may be running.
MOMENTS = ("logged", "staging", "saved")


def _progress(run: RunFolder) -> tuple[int, int, bool]:
    """(last logged step, last saved step, a checkpoint is being written), read while the run writes."""
    rows = run.metrics()  # a line still being written is skipped
    saved = run.checkpoint_step() or 0  # train_state.json is replaced atomically: never half read
    return (rows[-1]["step"] if rows else 0), saved, run.stage_dir.exists()


def _kill_at(proc: subprocess.Popen, run: RunFolder, target: int, moment: str) -> bool:
    """SIGKILL ``proc`` once the run in ``run`` reaches ``moment`` of step ``target``; False if it ended first.

    The run folder is polled, so the kill depends on training progress, never on wall time. A
    staging folder lives for a moment only: a poll that misses it kills at the next step's line.
    """
    while proc.poll() is None:
        logged, saved, staging = _progress(run)
        reached = {"logged": logged >= target,
                   "staging": (logged >= target and staging) or logged > target,
                   "saved": saved >= target}[moment]
        if reached:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=300)
            return True
        time.sleep(0.002)
    return False


@pytest.mark.slow
def test_sigkill_at_random_moments_then_resume_equals_an_uninterrupted_run(demo_cache, tmp_path, config_file):
    common = ["--steps", str(STEPS), "--device", "cpu", "--workers", "0"]
    ref = tmp_path / "ref"
    proc = _start(["--config", str(config_file), "--out", str(ref), *common], tmp_path / "ref.log")
    proc.wait(timeout=300)
    assert proc.returncode == 0, (tmp_path / "ref.log").read_text()

    out = tmp_path / "killed"
    run = RunFolder(out)
    rng = random.Random(1234)
    kills, resumed_at, moments, last = 0, [], [], 0
    args = ["--config", str(config_file), "--out", str(out), *common]
    while True:
        log = tmp_path / f"run{kills}.log"
        proc = _start(args, log)
        # A random step and moment within it. At least two steps past the checkpoint: the line of
        # the step after it may be left from the killed run (the resume drops it), and the first
        # run gets past step 1, so there is a checkpoint to resume from. The third kill leaves
        # steps to run after it.
        if kills < 3:
            high = min(last + 3, STEPS - 3)
            target, moment = rng.randint(min(last + 2, high), high), rng.choice(MOMENTS)
            assert _kill_at(proc, run, target, moment), f"the run ended before step {target} ({moment})"
            moments.append((target, moment))
        proc.wait(timeout=300)
        if proc.returncode == 0:
            break
        assert proc.returncode == -signal.SIGKILL, log.read_text()
        kills += 1
        last = run.checkpoint_step()
        resumed_at.append(last)
        args = ["--resume", str(out), *common]
    assert kills == 3
    assert all(1 <= s <= STEPS for s in resumed_at), resumed_at
    # Never before the moment asked for: step t's line is written after checkpoint t - 1.
    assert all(s >= (t if m == "saved" else t - 1) for s, (t, m) in zip(resumed_at, moments)), (resumed_at, moments)

    want, got = _weights(ref), _weights(out)
    assert want.keys() == got.keys()
    differ = [k for k in want if not torch.equal(want[k], got[k])]
    assert differ == []
    lines, ref_lines = run.metrics(), RunFolder(ref).metrics()
    assert [r["step"] for r in lines] == list(range(1, STEPS + 1))
    assert [r["loss"] for r in lines] == [r["loss"] for r in ref_lines]
    assert not run.stage_dir.exists()


def _tiny_run_configs():
    model_cfg, train_cfg = load_preset("tiny")
    model_cfg.vision.depth, model_cfg.vision.width, model_cfg.vision.heads = 1, 48, 2
    model_cfg.head.out_dim = 64
    train_cfg = TrainConfig.from_dict({**train_cfg.to_dict(), "batch_size": 4, "steps": 3, "warmup_steps": 1,
                                       "log_every": 1, "save_every": 1})
    return model_cfg, train_cfg


@pytest.mark.slow
def test_full_disk_during_a_save_keeps_the_previous_checkpoint(demo_cache, tmp_path, monkeypatch):
    model_cfg, train_cfg = _tiny_run_configs()
    out = tmp_path / "run"
    real = checkpoint_mod.save_tensors
    calls = {"n": 0}

    def failing_save(path, tensors, metadata=None):
        calls["n"] += 1
        if calls["n"] == 2:  # step 2's training-state file, half written
            real(path, tensors, metadata)
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, tensors, metadata)

    monkeypatch.setattr(checkpoint_mod, "save_tensors", failing_save)
    with pytest.raises(TrainingError, match="step 2 .*No space left on device.*previous checkpoint") as info:
        list(train(model_cfg, train_cfg, data="demo", out_dir=out, device="cpu"))
    assert "\n" not in str(info.value)
    assert not RunFolder(out).stage_dir.exists()
    assert RunFolder(out).checkpoint_step() == 1
    assert run_mod.step_tag(out / MODEL_FILE) == "1"
    monkeypatch.setattr(checkpoint_mod, "save_tensors", real)
    # The previous checkpoint loads and the run resumes from it.
    steps = [i.step for i in train(model_cfg, train_cfg, out_dir=out, device="cpu", resume=True)]
    assert steps == [2, 3]


@pytest.mark.slow
def test_a_crash_while_renaming_is_finished_on_resume(demo_cache, tmp_path, monkeypatch):
    model_cfg, train_cfg = _tiny_run_configs()
    full = tmp_path / "full"
    list(train(model_cfg, train_cfg, data="demo", out_dir=full, device="cpu"))

    out = tmp_path / "run"
    real_replace = os.replace
    state = {"renames": 0}

    def crash_on_second_rename(src, dst):
        # Count the renames out of the staging folder: 4 files per checkpoint (model, config,
        # state tensors, state JSON). The 6th is step 2's second: one file moved, three not.
        if Path(src).parent.name == RunFolder.STAGE_DIR and Path(dst).parent.name != RunFolder.STAGE_DIR:
            state["renames"] += 1
            if state["renames"] == 6:
                raise KeyboardInterrupt  # stands in for the process dying mid-rename
        return real_replace(src, dst)

    monkeypatch.setattr(run_mod.os, "replace", crash_on_second_rename)
    with pytest.raises(KeyboardInterrupt):
        list(train(model_cfg, train_cfg, data="demo", out_dir=out, device="cpu"))
    monkeypatch.setattr(run_mod.os, "replace", real_replace)
    stage = RunFolder(out).stage_dir
    assert (stage / RunFolder.STAGE_COMPLETE).exists()  # complete, half renamed
    steps = [i.step for i in train(model_cfg, train_cfg, out_dir=out, device="cpu", resume=True)]
    assert steps == [3]  # rolled forward to step 2, then continued
    assert not stage.exists()
    want, got = _weights(full), _weights(out)
    assert all(torch.equal(want[k], got[k]) for k in want)


def test_an_incomplete_staged_checkpoint_is_discarded(demo_cache, tmp_path):
    model_cfg, train_cfg = _tiny_run_configs()
    out = tmp_path / "run"
    list(train(model_cfg, train_cfg, data="demo", out_dir=out, device="cpu"))
    run = RunFolder(out)
    run.stage_dir.mkdir()
    (run.stage_dir / RunFolder.STATE_JSON).write_text('{"step": 99')  # a write the crash cut short
    run.recover()
    assert not run.stage_dir.exists()
    assert run.checkpoint_step() == 3


def test_a_torn_metrics_line_is_dropped_on_resume(tmp_path):
    run = RunFolder(tmp_path)
    path = run.metrics_file
    path.write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "loss": 1.5}\n{"step": 3, "lo')
    assert [r["step"] for r in run.metrics()] == [1, 2]  # a reader skips the torn line too
    run.truncate_metrics(2)
    assert path.read_text() == '{"step": 1, "loss": 2.0}\n{"step": 2, "loss": 1.5}\n'
