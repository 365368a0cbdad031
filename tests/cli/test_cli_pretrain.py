"""`detailclip pretrain` end to end, its errors, and the import discipline of the CLI and core."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import detailclip_cli

PACKAGE = Path(detailclip_cli.__file__).parent


def run_cli(*args: str, env_extra: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "detailclip_cli", *args], capture_output=True,
                          text=True, env=env, timeout=timeout)


@pytest.fixture
def small_config(tmp_path) -> Path:
    path = tmp_path / "small.json"
    path.write_text(json.dumps({"preset": "tiny", "model": {"vision": {"depth": 2}, "head": {"out_dim": 128}},
                                "train": {"batch_size": 4, "log_every": 1, "save_every": 2}}))
    return path


@pytest.mark.slow
def test_pretrain_end_to_end_and_resume(demo_cache, tmp_path, small_config):
    out = tmp_path / "run"
    result = run_cli("pretrain", "--config", str(small_config), "--steps", "2", "--out", str(out), "--device", "cpu")
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""  # results only; progress and messages go to stderr
    assert "done: 2 steps" in result.stderr
    for name in ("model.safetensors", "config.json", "train_state.safetensors", "metrics.jsonl", "run.json"):
        assert (out / name).exists(), name
    assert [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2]

    result = run_cli("pretrain", "--resume", str(out), "--steps", "3")
    assert result.returncode == 0, result.stderr
    assert [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]
    assert json.loads((out / "train_state.json").read_text())["step"] == 3


@pytest.mark.slow
@pytest.mark.parametrize("args, message", [
    (["--keep-ratio", "1.5"], "keep_ratio must be in (0, 1]"),
    (["--block-size", "3"], "block_size 3 does not divide the 8x8 patch grid"),
    (["--removal", "sometimes"], "removal must be attention, random or none"),
    (["--batch-size", "0"], "batch_size must be at least 2"),
    (["--precision", "fp8"], "precision must be auto, fp32, bf16 or fp16, not 'fp8'"),
    (["--data", "/no/such/folder"], "/no/such/folder"),
    (["--preset", "huge"], "unknown preset 'huge'"),
    (["--recipe", "mae"], "unknown recipe 'mae' (choose from detailclip, clip, flip, slip, a-clip-like"),
    (["--recipe", "flip", "--block-size", "3"], "block_size 3 does not divide the 8x8 patch grid"),
])
def test_pretrain_bad_values_give_one_line_and_exit_2(demo_cache, tmp_path, args, message):
    result = run_cli("pretrain", "--out", str(tmp_path / "x"), "--steps", "1", *args)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert message in lines[0]
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("args, message", [
    (["pretrain", "--bogus"], "No such option: --bogus (Possible options: --out) (see `"),
    (["pretrain", "--steps", "x"], "Invalid value for '--steps'"),
    (["evaluate", "--task", "knn"], "Invalid value for '--task'"),
    (["attn-map", "a.png", "--keep-ratio", "2"], "Invalid value for '--keep-ratio'"),
    (["nosuchcmd"], "No such command 'nosuchcmd'. (see `"),
])
def test_option_parsing_errors_are_one_line_and_exit_2(args, message):
    result = run_cli(*args)
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines() == [f"error: {result.stderr.splitlines()[0][7:]}"]
    assert message in result.stderr and result.stdout == ""
    assert result.stderr.rstrip().endswith(f"{args[0] if args[0] != 'nosuchcmd' else 'detailclip_cli'} --help`)")


@pytest.mark.slow
def test_config_file_errors(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"train": {"keep_ratoi": 0.5}}))
    result = run_cli("pretrain", "--config", str(bad), "--out", str(tmp_path / "x"))
    assert result.returncode == 2
    assert "unknown key(s) in train: keep_ratoi" in result.stderr
    newer = tmp_path / "newer.json"
    newer.write_text(json.dumps({"model": {"version": 99}}))
    result = run_cli("pretrain", "--config", str(newer), "--out", str(tmp_path / "x"))
    assert result.returncode == 2 and "newer than this detailclip understands" in result.stderr


def test_help_does_not_import_torch():
    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from detailclip_cli.cli import app\n"
        "r = CliRunner().invoke(app, ['--help'])\n"
        "assert r.exit_code == 0, r.output\n"
        "for cmd in ['pretrain']:\n"
        "    r = CliRunner().invoke(app, [cmd, '--help'])\n"
        "    assert r.exit_code == 0 and 'Example' in r.output, r.output\n"
        "heavy = [m for m in ('torch', 'open_clip', 'timm', 'matplotlib') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_every_command_help_has_an_example():
    import typer.main
    from typer.testing import CliRunner

    from detailclip_cli.cli import app

    group = typer.main.get_command(app)
    assert group.commands, "no commands registered"
    for name in group.commands:
        result = CliRunner().invoke(app, [name, "--help"])
        assert result.exit_code == 0, name
        assert "Example" in result.output, f"{name} --help has no example"


@pytest.mark.slow
def test_sigterm_saves_the_last_whole_step_and_resume_continues(demo_cache, tmp_path, small_config):
    import signal


    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "detailclip_cli", "pretrain", "--config", str(small_config),
                             "--steps", "500", "--save-every", "1000", "--out", str(out), "--device", "cpu"],
                            stderr=subprocess.PIPE, text=True, env=env)
    lines = []
    for line in proc.stderr:  # plain progress lines: stderr is not a terminal
        lines.append(line)
        if line.startswith("step 2/"):
            proc.send_signal(signal.SIGTERM)
            break
    rest = proc.stderr.read()
    proc.wait(timeout=120)
    assert proc.returncode == 1, "".join(lines) + rest
    assert "saving after this step" in rest and "Traceback" not in rest
    stopped = int(rest.split("stopped at step ")[1].split(";")[0])
    assert stopped >= 2
    assert json.loads((out / "train_state.json").read_text())["step"] == stopped
    result = run_cli("pretrain", "--resume", str(out), "--steps", str(stopped + 1))
    assert result.returncode == 0, result.stderr
    steps = [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps[-1] == stopped + 1 and len(steps) == len(set(steps))


@pytest.mark.slow
def test_dry_run_prints_costs_and_writes_nothing(tmp_path, small_config):
    out = tmp_path / "run"
    full = run_cli("pretrain", "--config", str(small_config), "--out", str(out), "--dry-run", "--device", "cpu")
    plain = run_cli("pretrain", "--config", str(small_config), "--out", str(out), "--dry-run", "--device", "cpu",
                    "--no-distill", "--no-reconstruct", "--removal", "none")
    assert full.returncode == 0 and plain.returncode == 0, full.stderr + plain.stderr
    assert not out.exists()

    def figures(stdout: str) -> dict[str, float]:
        rows = {}
        for line in stdout.splitlines():
            cells = [c.strip() for c in line.strip("│ ").split("│")]
            if len(cells) == 2 and cells[1]:
                rows[cells[0]] = float(cells[1].replace(",", "").split()[0])
        return rows

    a, b = figures(full.stdout), figures(plain.stdout)
    from detailclip_cli.core.config import load_config_file
    from detailclip_cli.core.model.detailclip import DetailCLIP

    model_cfg, _ = load_config_file(small_config)
    assert a["parameters: total"] == DetailCLIP(model_cfg).num_params()["total"]
    assert "parameters: decoder" in a and "parameters: decoder" not in b
    assert a["GFLOP per step (forward + backward)"] > b["GFLOP per step (forward + backward)"] > 0
    # Resident memory, in MiB: the built model holds at least its fp32 parameters, and a training
    # step allocates activations and gradients on top (a unit slip or a broken reading fails here).
    assert a["memory: built model"] >= a["parameters: total"] * 4 / 2**20
    assert a["memory: a step's peak on top"] > 0


TRAINING_VALUES = {"removal": "random", "score_layer": "last", "precision": "bf16"}


@pytest.mark.parametrize("command", ["pretrain", "distill"])
def test_every_training_option_sets_its_config_field(command, monkeypatch):
    """Each option named like a ``TrainConfig`` field reaches that field, and only those do."""
    import dataclasses

    import typer.main
    from typer.testing import CliRunner

    from detailclip_cli.cli import app
    from detailclip_cli.core.config import TrainConfig
    from detailclip_cli.core.training import settings

    given = {}

    def capture(preset, config, overrides, **kwargs):
        given.update(overrides)
        raise SystemExit(0)

    monkeypatch.setattr(settings, "new_configs", capture)
    fields = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    params = [p for p in typer.main.get_command(app).commands[command].params if p.name in fields]
    args, expected = [], {}
    for p in params:
        if isinstance(fields[p.name], bool):
            args.append(p.opts[0])
            expected[p.name] = True
        else:
            value = TRAINING_VALUES.get(p.name, 3 if isinstance(fields[p.name], int) else 0.25)
            args += [p.opts[0], str(value)]
            expected[p.name] = value
    assert len(params) >= 20
    result = CliRunner().invoke(app, [command, *args])
    assert result.exit_code == 0, result.output
    assert given == expected
    # The hidden negative of a switch turns it off.
    given.clear()
    CliRunner().invoke(app, [command, "--no-compile", "--no-grad-checkpointing"])
    assert given == {"compile": False, "grad_checkpointing": False}
