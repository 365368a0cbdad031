"""Nothing lost, nothing mixed (issue 19): each finding reproduced through the command line.

1 two writers in one folder; 2 a new run over an old one; 3 ``--batch-size 1`` and a skipped
last step; 4 a full disk (tests/core/store/test_integrity.py); 5 non-finite or altered weights;
6 option values; 7 files of the wrong kind; 9 messages and exit codes.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import cli
from PIL import Image
from safetensors.torch import load_file, save_file

from detailclip_cli.cli import pretrain as pretrain_cmd
from detailclip_cli.cli.console import GracefulStop
from detailclip_cli.cli.output import finite_json
from detailclip_cli.core.config import TrainConfig, load_preset
from detailclip_cli.core.store.io import CONFIG_FILE, MODEL_FILE
from detailclip_cli.core.store.lock import FileLock
from detailclip_cli.core.store.run import RunFolder
from detailclip_cli.core.training import loop as loop_mod
from detailclip_cli.core.training.pretrain import train
from detailclip_cli.errors import TrainingError


def _one_error(err: str) -> str:
    """The one ``error:`` line of a command's stderr (other lines, e.g. which model loaded, may be there)."""
    lines = [ln for ln in err.splitlines() if ln.startswith("error: ")]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


@pytest.fixture
def config_file(tmp_path) -> Path:
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps({
        "preset": "tiny",
        "model": {"vision": {"depth": 1, "width": 48, "heads": 2}, "text": {"layers": 1},
                  "head": {"out_dim": 64, "hidden_dim": 64, "bottleneck_dim": 32}},
        "train": {"batch_size": 4, "log_every": 1, "save_every": 1, "warmup_steps": 2},
    }))
    return path


def _tiny_configs(steps: int = 2):
    model_cfg, train_cfg = load_preset("tiny")
    model_cfg.vision.depth, model_cfg.vision.width, model_cfg.vision.heads = 1, 48, 2
    model_cfg.head.out_dim = 64
    train_cfg = TrainConfig.from_dict({**train_cfg.to_dict(), "batch_size": 4, "steps": steps, "warmup_steps": 1,
                                       "log_every": 1, "save_every": 1})
    return model_cfg, train_cfg


# ---------------------------------------------------------------- 1: two writers in one folder


@pytest.mark.slow
def test_a_second_writer_is_refused_while_the_first_writes(demo_cache, tmp_path, config_file):
    out = tmp_path / "M"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    base = [sys.executable, "-m", "detailclip_cli", "pretrain", "--config", str(config_file), "--device", "cpu"]
    with open(tmp_path / "first.log", "w") as log:
        first = subprocess.Popen([*base, "--seed", "1", "--steps", "100000", "--out", str(out)], stderr=log,
                                 stdout=subprocess.DEVNULL, env=env)
    try:
        run = RunFolder(out)
        while not run.metrics() and first.poll() is None:  # writing: it holds the lock, a step is logged
            time.sleep(0.05)
        assert FileLock(run.lock_file, what="").holder() == first.pid
        second = subprocess.run([*base, "--seed", "2", "--steps", "12", "--out", str(out), "--force"],
                                capture_output=True, text=True, env=env, timeout=300)
        assert second.returncode == 1  # even --force never moves a folder another process is writing
        assert f"is being written by process {first.pid}" in _one_error(second.stderr)
        resumed = subprocess.run([sys.executable, "-m", "detailclip_cli", "pretrain", "--resume", str(out)],
                                 capture_output=True, text=True, env=env, timeout=300)
        assert resumed.returncode == 1 and f"process {first.pid}" in _one_error(resumed.stderr)
        assert first.poll() is None  # the writer was not disturbed
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=60)
    # Nothing of the refused runs got in: the first run's seed, one line per step in order.
    assert json.loads(run.settings_file.read_text())["train"]["seed"] == 1
    steps = [r["step"] for r in run.metrics()]
    assert steps == list(range(1, len(steps) + 1))
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("M.old-")]  # --force moved nothing


# ---------------------------------------------------------------- 2: a new run over an old one


@pytest.mark.slow
def test_a_new_run_over_an_old_one_needs_force_and_moves_it_aside(demo_cache, tmp_path, monkeypatch, capsys,
                                                                   config_file):
    out = tmp_path / "old"
    args = ["pretrain", "--config", config_file, "--steps", "1", "--device", "cpu", "--out", out]
    assert cli(monkeypatch, capsys, *args)[0] == 0
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file() and p.name != ".lock"}
    code, err = cli(monkeypatch, capsys, *args)
    assert code == 2
    assert "already holds a run; continue a run with --resume" in _one_error(err)
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file() and p.name != ".lock"} == before
    code, err = cli(monkeypatch, capsys, *args, "--force")
    assert code == 0, err
    (aside,) = [p for p in tmp_path.iterdir() if p.name.startswith("old.old-")]
    assert f"now in {aside}" in err
    assert {p.name: p.read_bytes() for p in aside.iterdir() if p.is_file()} == before  # the old run, whole
    assert [r["step"] for r in RunFolder(out).metrics()] == [1]  # the new run, unmixed


# ---------------------------------------------------------------- 3: nothing to learn from


def test_batch_size_1_is_refused(tmp_path, monkeypatch, capsys):
    code, err = cli(monkeypatch, capsys, "pretrain", "--batch-size", "1", "--out", tmp_path / "x")
    assert code == 2 and "batch_size must be at least 2" in _one_error(err)
    code, err = cli(monkeypatch, capsys, "distill", "--batch-size", "1", "--out", tmp_path / "x")
    assert code == 2 and "batch_size must be at least 2" in _one_error(err)
    assert not (tmp_path / "x").exists()


@pytest.mark.slow
def test_a_skipped_last_step_still_saves(demo_cache, tmp_path, monkeypatch):
    real = loop_mod._tally
    calls = {"n": 0}

    def one_good_image_in_the_last_step(good, bad, stop, device):
        calls["n"] += 1
        return real(1 if calls["n"] == 3 else good, bad, stop, device)

    monkeypatch.setattr(loop_mod, "_tally", one_good_image_in_the_last_step)
    out = tmp_path / "run"
    infos = list(train(*_tiny_configs(steps=3), out_dir=out, device="cpu"))
    assert [i.step for i in infos] == [1, 2]  # step 3 had nothing to learn from: skipped, not logged ...
    assert RunFolder(out).checkpoint_step() == 3  # ... but its checkpoint, the last, is written


# ---------------------------------------------------------------- 5: weights


@pytest.mark.slow
def test_nan_weights_are_refused_by_the_commands(tmp_path, monkeypatch, capsys, run_dir):
    folder = tmp_path / "nan"
    shutil.copytree(run_dir, folder)
    tensors = load_file(str(folder / MODEL_FILE))
    key = next(k for k, v in tensors.items() if v.is_floating_point())
    tensors[key] = torch.full_like(tensors[key], float("nan"))
    save_file(tensors, str(folder / MODEL_FILE))
    image = tmp_path / "a.png"
    Image.new("RGB", (64, 64), (200, 30, 30)).save(image)
    code, err = cli(monkeypatch, capsys, "zero-shot", image, "--labels", "a,b", "--model", folder, "--format", "json")
    assert code == 2 and "has changed since it was saved" in _one_error(err)
    code, err = cli(monkeypatch, capsys, "zero-shot", image, "--labels", "a,b", "--model", folder, "--no-verify")
    assert code == 2 and "non-finite weights (NaN or Inf)" in _one_error(err)


def test_json_results_never_hold_nan():
    assert finite_json({"prob": float("nan"), "r": [1.5, float("inf")], "n": 2}) == {"prob": None, "r": [1.5, None],
                                                                                     "n": 2}


# ---------------------------------------------------------------- 6: option values


@pytest.fixture
def no_training(monkeypatch):
    """Stop pretrain and distill after their checks: what they would train is recorded, nothing runs."""
    ran = []
    monkeypatch.setattr(pretrain_cmd, "run", lambda *a, **k: ran.append(k))
    from detailclip_cli.cli import distill as distill_cmd

    monkeypatch.setattr(distill_cmd, "run", lambda *a, **k: ran.append(k))
    return ran


@pytest.mark.parametrize("args, words", [
    (["--lr", "nan"], "lr must be a finite number"),
    (["--lr", "inf"], "lr must be a finite number"),
    (["--seed", "-1"], "seed must be an integer in [0, 2**32)"),
    (["--seed", "99999999999999999999999"], "seed must be an integer in [0, 2**32)"),
    (["--epochs", "inf"], "epochs must be a positive number"),
    (["--epochs", "0"], "epochs must be a positive number"),
    (["--score-layer", "4"], "score_layer 4 is out of range: the image tower has 4 blocks"),
    (["--score-layer", "99"], "score_layer 99 is out of range"),
    (["--score-layer", "-99"], "score_layer -99 is out of range"),
    (["--weight-decay", "-1"], "weight_decay must be at least 0"),
    (["--w-rec", "-1"], "w_rec must be at least 0"),
    (["--w-clip", "-0.5"], "w_clip must be at least 0"),
    (["--lock-text"], "--lock-text freezes the text tower --init gave"),
    (["--preset", ""], "unknown preset ''"),
])
def test_bad_option_values_are_one_line_before_any_work(tmp_path, monkeypatch, capsys, no_training, args, words):
    code, err = cli(monkeypatch, capsys, "pretrain", "--out", tmp_path / "x", *args)
    assert code == 2, err
    assert words in _one_error(err)
    assert no_training == [] and not (tmp_path / "x").exists()


def test_an_out_that_is_a_file_is_one_line(tmp_path, monkeypatch, capsys):
    (tmp_path / "f").write_text("keep me")
    code, err = cli(monkeypatch, capsys, "pretrain", "--steps", "1", "--out", tmp_path / "f")
    assert code == 2 and "is a file, not a run folder" in _one_error(err)
    assert (tmp_path / "f").read_text() == "keep me"


@pytest.mark.parametrize("args, words", [
    (["--no-distill", "--w-patch", "2"], "--w-patch 2.0 does nothing: this run has no distillation head"),
    (["--no-reconstruct", "--w-rec", "3"], "--w-rec 3.0 does nothing: this run has no pixel decoder"),
    (["--block-size", "8"], "removes nothing on the 8x8 patch grid"),
])
def test_settings_that_do_nothing_are_warned_about(tmp_path, monkeypatch, capsys, no_training, args, words):
    code, err = cli(monkeypatch, capsys, "pretrain", "--out", tmp_path / "x", *args)
    assert code == 0 and len(no_training) == 1
    assert [ln for ln in err.splitlines() if ln.strip()] == [f"warning: {ln}" for ln in err.replace(
        "warning: ", "").splitlines() if ln.strip()]
    assert words in err


def test_reconstruct_seed_out_of_range(tmp_path, monkeypatch, capsys):
    for seed in ("-1", "99999999999999999999999"):
        code, err = cli(monkeypatch, capsys, "reconstruct", tmp_path / "a.png", "--removal", "random", "--seed", seed)
        assert code == 2 and "seed must be an integer in [0, 2**32)" in _one_error(err)


# ---------------------------------------------------------------- 7: files of the wrong kind


@pytest.fixture
def png(tmp_path) -> Path:
    path = tmp_path / "some.png"
    Image.new("RGB", (4, 4), (1, 2, 3)).save(path)
    return path


def test_a_picture_as_labels_file_or_metrics_is_one_line(png, tmp_path, monkeypatch, capsys):
    code, err = cli(monkeypatch, capsys, "zero-shot", png, "--labels-file", png)
    assert code == 2 and "is not UTF-8 text" in _one_error(err)
    code, err = cli(monkeypatch, capsys, "plot", png, "--out", tmp_path / "c.png")
    assert code == 2 and "is not a JSON line" in _one_error(err)


@pytest.mark.slow
@pytest.mark.parametrize("change, words", [
    ({"patch_size": -8}, "patch_size must be at least 1"),
    ({"std": [0, 0, 0]}, "std must be positive"),
])
def test_a_model_config_out_of_range_is_one_line_in_every_command(tmp_path, png, monkeypatch, capsys, run_dir,
                                                                  change, words):
    folder = tmp_path / "bad"
    shutil.copytree(run_dir, folder)
    config = json.loads((folder / CONFIG_FILE).read_text())
    config["vision"].update(change)
    (folder / CONFIG_FILE).write_text(json.dumps(config))
    for args in (["info", folder], ["zero-shot", png, "--labels", "a,b", "--model", folder],
                 ["pretrain", "--resume", folder]):
        code, err = cli(monkeypatch, capsys, *args)
        assert code == 2 and words in _one_error(err), args


# ---------------------------------------------------------------- 9: messages and exit codes


@pytest.mark.slow
def test_a_non_finite_loss_before_any_checkpoint_says_none_was_kept(demo_cache, tmp_path, monkeypatch):
    monkeypatch.setattr(loop_mod, "mean_across", lambda x: x * float("nan"))
    with pytest.raises(TrainingError) as info:
        list(train(*_tiny_configs(), out_dir=tmp_path / "run", device="cpu"))
    message = str(info.value)
    assert "at step 1; stopped, no checkpoint was saved in" in message
    assert "loss loss" not in message and "last good checkpoint" not in message


def test_a_second_interrupt_exits_130_with_a_message(tmp_path, monkeypatch, capsys):
    from rich.console import Console

    class Run:
        stopped = False

        def request_stop(self):
            self.stopped = True

    run = Run()
    stop = GracefulStop(run, console=Console(stderr=True))
    stop._handle(signal.SIGINT, None)  # the first: save after this step
    assert run.stopped
    with pytest.raises(KeyboardInterrupt):
        stop._handle(signal.SIGINT, None)  # the second: at once
    assert "SIGINT again: stopping at once" in capsys.readouterr().err

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt  # what the second Ctrl-C raises inside a run

    monkeypatch.setattr(pretrain_cmd, "run", interrupted)
    code, err = cli(monkeypatch, capsys, "pretrain", "--out", tmp_path / "x")
    assert code == 130
    assert _one_error(err) == "error: interrupted (Ctrl-C)"


@pytest.mark.slow
def test_resuming_a_finished_run_says_so(tmp_path, monkeypatch, capsys, run_dir):
    folder = tmp_path / "done"
    shutil.copytree(run_dir, folder)
    code, err = cli(monkeypatch, capsys, "pretrain", "--resume", folder, "--device", "cpu")
    assert code == 0
    assert f"nothing to train: the run in {folder} is already at step 4 of 4" in err


def test_reconstruct_prints_no_empty_table_when_every_input_failed(tmp_path, monkeypatch, capsys):
    from detailclip_cli.cli import main

    (tmp_path / "bad.png").write_bytes(b"not a picture")
    monkeypatch.setattr(sys, "argv", ["detailclip", "reconstruct", str(tmp_path / "bad.png"), "--out",
                                      str(tmp_path / "r"), "--device", "cpu"])
    with pytest.raises(SystemExit) as info:
        main()
    captured = capsys.readouterr()
    assert info.value.code == 1 and "bad.png" in _one_error(captured.err)
    assert captured.out == ""
