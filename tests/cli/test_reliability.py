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

from detailclip_cli.core.store import run as run_mod
from detailclip_cli.core.training.loop import _truncate_metrics
from detailclip_cli.core.training.pretrain import train
from detailclip_cli.errors import TrainingError
from detailclip_cli.core.config import TrainConfig, load_preset
from detailclip_cli.core.store.io import MODEL_FILE, load_tensors

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


def _start(args: list[str]) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # the same thread count in every run: same arithmetic
    return subprocess.Popen([sys.executable, "-m", "detailclip_cli", "pretrain", *args], stderr=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, text=True, env=env)


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_tensors(folder / MODEL_FILE)


def test_sigkill_at_random_moments_then_resume_equals_an_uninterrupted_run(demo_cache, tmp_path, config_file):
    common = ["--steps", str(STEPS), "--device", "cpu", "--workers", "0"]
    ref = tmp_path / "ref"
    proc = _start(["--config", str(config_file), "--out", str(ref), *common])
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err

    out = tmp_path / "killed"
    rng = random.Random(1234)
    kills, resumed_at, last = 0, [], 1
    args = ["--config", str(config_file), "--out", str(out), *common]
    while True:
        proc = _start(args)
        # Kill after a random step is logged, plus a random delay: the next step, its metrics line
        # or its checkpoint write may be in progress. The first run always gets past step 1, so
        # there is a checkpoint to resume from.
        target = rng.randint(last + 1, last + 3) if kills < 3 else None
        for line in proc.stderr:
            if target is not None and line.startswith(f"step {target}/"):
                time.sleep(rng.uniform(0.0, 0.4))
                proc.send_signal(signal.SIGKILL)
                break
        proc.stderr.read()
        proc.wait(timeout=300)
        if proc.returncode == 0:
            break
        assert proc.returncode == -signal.SIGKILL
        kills += 1
        last = json.loads((out / "train_state.json").read_text())["step"]
        resumed_at.append(last)
        args = ["--resume", str(out), *common]
    assert kills == 3
    assert all(1 <= s <= STEPS for s in resumed_at)

    want, got = _weights(ref), _weights(out)
    assert want.keys() == got.keys()
    differ = [k for k in want if not torch.equal(want[k], got[k])]
    assert differ == []
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    ref_lines = [json.loads(x) for x in (ref / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == list(range(1, STEPS + 1))
    assert [r["loss"] for r in lines] == [r["loss"] for r in ref_lines]
    assert not (out / run_mod.STAGE_DIR).exists()


def _tiny_run_configs():
    model_cfg, train_cfg = load_preset("tiny")
    model_cfg.vision.depth, model_cfg.vision.width, model_cfg.vision.heads = 1, 48, 2
    model_cfg.head.out_dim = 64
    train_cfg = TrainConfig.from_dict({**train_cfg.to_dict(), "batch_size": 4, "steps": 3, "warmup_steps": 1,
                                       "log_every": 1, "save_every": 1})
    return model_cfg, train_cfg


def test_full_disk_during_a_save_keeps_the_previous_checkpoint(demo_cache, tmp_path, monkeypatch):
    model_cfg, train_cfg = _tiny_run_configs()
    out = tmp_path / "run"
    real = run_mod.save_tensors
    calls = {"n": 0}

    def failing_save(path, tensors, metadata=None):
        calls["n"] += 1
        if calls["n"] == 2:  # step 2's training-state file, half written
            real(path, tensors, metadata)
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, tensors, metadata)

    monkeypatch.setattr(run_mod, "save_tensors", failing_save)
    with pytest.raises(TrainingError, match="step 2 .*No space left on device.*previous checkpoint") as info:
        list(train(model_cfg, train_cfg, data="demo", out_dir=out, device="cpu"))
    assert "\n" not in str(info.value)
    assert not (out / run_mod.STAGE_DIR).exists()
    assert json.loads((out / "train_state.json").read_text())["step"] == 1
    assert run_mod.step_tag(out / MODEL_FILE) == "1"
    monkeypatch.setattr(run_mod, "save_tensors", real)
    # The previous checkpoint loads and the run resumes from it.
    steps = [i.step for i in train(model_cfg, train_cfg, out_dir=out, device="cpu", resume=True)]
    assert steps == [2, 3]


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
        if Path(src).parent.name == run_mod.STAGE_DIR and Path(dst).parent.name != run_mod.STAGE_DIR:
            state["renames"] += 1
            if state["renames"] == 6:
                raise KeyboardInterrupt  # stands in for the process dying mid-rename
        return real_replace(src, dst)

    monkeypatch.setattr(run_mod.os, "replace", crash_on_second_rename)
    with pytest.raises(KeyboardInterrupt):
        list(train(model_cfg, train_cfg, data="demo", out_dir=out, device="cpu"))
    monkeypatch.setattr(run_mod.os, "replace", real_replace)
    stage = out / run_mod.STAGE_DIR
    assert (stage / run_mod.STAGE_COMPLETE).exists()  # complete, half renamed
    steps = [i.step for i in train(model_cfg, train_cfg, out_dir=out, device="cpu", resume=True)]
    assert steps == [3]  # rolled forward to step 2, then continued
    assert not stage.exists()
    want, got = _weights(full), _weights(out)
    assert all(torch.equal(want[k], got[k]) for k in want)


def test_an_incomplete_staged_checkpoint_is_discarded(demo_cache, tmp_path):
    model_cfg, train_cfg = _tiny_run_configs()
    out = tmp_path / "run"
    list(train(model_cfg, train_cfg, data="demo", out_dir=out, device="cpu"))
    stage = out / run_mod.STAGE_DIR
    stage.mkdir()
    (stage / "train_state.json").write_text('{"step": 99')  # a write the crash cut short
    run_mod.recover_checkpoint(out)
    assert not stage.exists()
    assert json.loads((out / "train_state.json").read_text())["step"] == 3


def test_a_torn_metrics_line_is_dropped_on_resume(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "loss": 1.5}\n{"step": 3, "lo')
    _truncate_metrics(path, 2)
    assert path.read_text() == '{"step": 1, "loss": 2.0}\n{"step": 2, "loss": 1.5}\n'
