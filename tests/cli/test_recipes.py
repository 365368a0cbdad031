"""``detailclip pretrain --recipe``: the list, the errors, every recipe end to end, the recipe
recorded in ``run.json``, shown by ``info`` and kept by ``--resume``."""

from __future__ import annotations

import json
import sys

import pytest

from detailclip_cli.core.recipes import RECIPES

# The loss terms each recipe logs (a zero-weight term is still computed and logged).
TERMS = {
    "detailclip": {"clip", "rec", "cls", "patch"},
    "clip": {"clip"},
    "flip": {"clip"},
    "slip": {"clip", "simclr"},
    "a-clip-like": {"clip", "cls", "patch"},
    "maskclip-like": {"clip", "rec", "cls", "patch"},
}


def run(monkeypatch, capsys, *args) -> tuple[int, str, str]:
    """The console entry point in-process: (exit code, stdout, stderr)."""
    from detailclip_cli.cli import main

    monkeypatch.setattr(sys, "argv", ["detailclip", *map(str, args)])
    with pytest.raises(SystemExit) as info:
        main()
    out, err = capsys.readouterr()
    return info.value.code, out, err


def test_recipe_list_prints_one_line_per_recipe(monkeypatch, capsys, tmp_path):
    code, out, err = run(monkeypatch, capsys, "pretrain", "--recipe", "list", "--out", tmp_path / "x")
    assert code == 0 and err == ""
    lines = out.splitlines()
    assert [line.split()[0] for line in lines] == list(RECIPES)
    assert lines[3].startswith("slip ") and "NT-Xent" in lines[3] and "temperature 0.1" in lines[3]
    assert not (tmp_path / "x").exists()  # a list trains nothing


def test_an_unknown_recipe_is_one_error_line(monkeypatch, capsys, tmp_path):
    code, out, err = run(monkeypatch, capsys, "pretrain", "--recipe", "mae", "--out", tmp_path / "x")
    assert code == 2 and out == ""
    assert err.splitlines() == ["error: unknown recipe 'mae' (choose from detailclip, clip, flip, slip, "
                                "a-clip-like, maskclip-like, or list to describe them)"]
    assert not (tmp_path / "x").exists()


@pytest.mark.slow
@pytest.mark.parametrize("name", RECIPES)
def test_every_recipe_runs_three_steps_on_the_demo_data(name, demo_cache, monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    out = tmp_path / name
    code, stdout, err = run(monkeypatch, capsys, "pretrain", "--recipe", name, "--preset", "tiny", "--steps", "3",
                            "--batch-size", "8", "--log-every", "1", "--seed", "0", "--out", out, "--device", "cpu")
    assert code == 0, err
    assert f"recipe={name}" in err and "done: 3 steps" in err
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    for r in rows:
        terms = {k for k in r if k in {"clip", "simclr", "rec", "cls", "patch"}}
        assert terms == TERMS[name], r
        assert r["loss"] > 0
    recorded = json.loads((out / "run.json").read_text())
    assert (recorded["recipe"], recorded["preset"]) == (name, "tiny")
    assert recorded["train"]["simclr_term"] == (name == "slip")


@pytest.mark.slow
def test_info_shows_the_recipe_and_resume_keeps_it(demo_cache, monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    out = tmp_path / "slip"
    code, _, err = run(monkeypatch, capsys, "pretrain", "--recipe", "slip", "--steps", "2", "--batch-size", "8",
                       "--log-every", "1", "--out", out, "--device", "cpu")
    assert code == 0, err

    code, stdout, err = run(monkeypatch, capsys, "info", out, "--format", "json")
    assert code == 0, err
    training = json.loads(stdout)["training"]
    assert (training["preset"], training["recipe"], training["simclr_term"]) == ("tiny", "slip", True)
    assert set(training["last_logged"]) >= {"clip", "simclr", "loss"}
    code, stdout, err = run(monkeypatch, capsys, "info", out)
    assert code == 0, err
    rows = {line.strip("│ ").split("│")[0].strip(): line for line in stdout.splitlines() if "│" in line}
    assert "slip" in rows["recipe"] and "tiny" in rows["preset"]

    # --resume continues with the run's recipe (its configs and its name) and takes no other.
    code, _, err = run(monkeypatch, capsys, "pretrain", "--resume", out, "--recipe", "clip")
    assert code == 2 and err.startswith("error: --resume continues a run with its own settings")
    code, _, err = run(monkeypatch, capsys, "pretrain", "--resume", out, "--steps", "3")
    assert code == 0, err
    assert "recipe=slip" in err
    last = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["step"] == 3 and "simclr" in last
    assert json.loads((out / "run.json").read_text())["recipe"] == "slip"
