"""`detailclip pretrain` end to end, its errors, and the import discipline of the CLI and core."""

from __future__ import annotations

import ast
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


@pytest.mark.parametrize("args, message", [
    (["--keep-ratio", "1.5"], "keep_ratio must be in (0, 1]"),
    (["--block-size", "3"], "block_size 3 does not divide the 8x8 patch grid"),
    (["--removal", "sometimes"], "removal must be attention, random or none"),
    (["--batch-size", "0"], "batch_size must be at least 1"),
    (["--precision", "fp8"], "precision must be auto, fp32, bf16 or fp16, not 'fp8'"),
    (["--data", "/no/such/folder"], "/no/such/folder"),
    (["--preset", "huge"], "unknown preset 'huge'"),
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
    from typer.testing import CliRunner

    from detailclip_cli.cli import app

    import typer.main

    group = typer.main.get_command(app)
    assert group.commands, "no commands registered"
    for name in group.commands:
        result = CliRunner().invoke(app, [name, "--help"])
        assert result.exit_code == 0, name
        assert "Example" in result.output, f"{name} --help has no example"


def test_core_never_imports_cli_or_plotting_libraries():
    forbidden = {"typer", "rich", "matplotlib"}
    offenders = []
    for path in (PACKAGE / "core").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            offenders += [f"{path.name}: {n}" for n in names if n.split(".")[0] in forbidden]
    assert not offenders, offenders
    # And at run time: importing every core module pulls none of them in.
    code = (
        "import importlib, pkgutil, sys\n"
        "import detailclip_cli.core as core\n"
        "for m in pkgutil.walk_packages(core.__path__, 'detailclip_cli.core.'):\n"
        "    importlib.import_module(m.name)\n"
        "bad = [m for m in ('typer', 'rich', 'matplotlib') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


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
    assert a["memory: a step's peak on top"] >= 0 and a["memory: built model"] > 0
