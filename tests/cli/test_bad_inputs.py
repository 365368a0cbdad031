"""Broken and unusual inputs to the commands: each good one is answered, each bad one named in one line.

The corpus of good and broken image files (``helpers.build_corpus``, the ``corpus`` fixture) goes
through the ``zero-shot``, ``attn-map`` and ``reconstruct`` commands and a ``pretrain`` run; how the
readers and datasets meet the same files is in ``tests/core/data/test_bad_files.py``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from helpers import png_bytes
from PIL import Image
from typer.testing import CliRunner

from detailclip_cli.cli import app
from detailclip_cli.cli.console import one_line
from detailclip_cli.cli.inputs import expand_inputs
from detailclip_cli.core.store.shipped import shipped_model_dir

SHIPPED_MODEL = shipped_model_dir()
_PIXEL = png_bytes(Image.new("RGB", (2, 2)))


# ---------------------------------------------------------------- command inputs


def test_symlink_loop_in_command_inputs(tmp_path):
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "x.png").write_bytes(_PIXEL)
    os.symlink(tmp_path / "imgs", tmp_path / "imgs" / "loop")
    os.symlink("self.png", tmp_path / "imgs" / "self.png")
    got = expand_inputs([str(tmp_path / "imgs"), str(tmp_path / "imgs" / "**" / "*.png"),
                         str(tmp_path / "imgs" / "self.png"), "~no-such-user-here/a.png"])
    assert got.paths == [tmp_path / "imgs" / "self.png", tmp_path / "imgs" / "x.png"]
    assert got.missing == ["~no-such-user-here/a.png"]



# ---------------------------------------------------------------- the inference commands

runner = CliRunner()


@pytest.fixture(scope="module")
def command_inputs(corpus, tmp_path_factory):
    """Every corpus file, three ordinary images, and a path that does not exist."""
    extra = tmp_path_factory.mktemp("good")
    ordinary = []
    for i, colour in enumerate([(250, 250, 250), (20, 20, 20), (200, 30, 30)]):
        ordinary.append(extra / f"ordinary-{i}.png")
        Image.new("RGB", (64, 48), colour).save(ordinary[-1])
    good = [*ordinary, *corpus.good.values()]
    bad = [*corpus.bad.values(), extra / "does-not-exist.png"]
    return good, bad


def _invoke(*args):
    result = runner.invoke(app, [os.fspath(a) for a in args])
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    return result


def _shown(path: Path) -> str:
    """How a path appears in a one-line message (control characters and bad bytes escaped)."""
    return one_line(path)


def _check_stderr(result, bad: list[Path]) -> None:
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == len(bad), result.stderr
    for path in bad:
        assert sum(_shown(path) in line for line in errors) >= 1, (path, result.stderr)
    for path in bad:  # the one line naming each file says what is wrong
        line = next(line for line in errors if _shown(path) in line)
        assert len(line) < 400


@pytest.mark.parametrize("command", ["zero-shot", "attn-map", pytest.param("reconstruct", marks=pytest.mark.slow)])
def test_commands_answer_good_inputs_and_name_bad_ones(command, command_inputs, tmp_path):
    good, bad = command_inputs
    order = [p for pair in zip(good, bad) for p in pair] + good[len(bad):] + bad[len(good):]
    args = {
        "zero-shot": ["--labels", "red,white,black", "--format", "jsonl"],
        "attn-map": ["--format", "json"],
        "reconstruct": ["--format", "json", "--out", tmp_path / "recon"],
    }[command]
    result = _invoke(command, *order, "--model", SHIPPED_MODEL, "--device", "cpu", *args)
    assert result.exit_code == 1
    if command == "zero-shot":
        records = [json.loads(line) for line in result.stdout.splitlines()]
    else:
        records = json.loads(result.stdout)["images"]
    assert [r["path"] for r in records] == [str(p) for p in order if p in good]
    _check_stderr(result, bad)
    if command == "reconstruct":
        pictures = [Path(r["png"]) for r in records]
        assert len(set(pictures)) == len(good) and all(p.stat().st_size > 0 for p in pictures)
        assert all("\n" not in str(p) for p in pictures)


@pytest.mark.parametrize("fmt", ["table", "csv"])
def test_zero_shot_table_and_csv_write_names_that_are_not_utf8(corpus, fmt, tmp_path):
    """A strict UTF-8 stdout (CliRunner's, or an en_US.UTF-8 terminal) must not fail on such a name."""
    path = corpus.good["name_not_utf8"]
    result = _invoke("zero-shot", path, "--labels", "a,b", "--model", SHIPPED_MODEL, "--device", "cpu",
                     "--format", fmt)
    assert result.exit_code == 0 and os.fsencode(path) in result.stdout_bytes
    out = tmp_path / "res.csv"
    _invoke("zero-shot", path, "--labels", "a,b", "--model", SHIPPED_MODEL, "--device", "cpu",
            "--format", "csv", "--output", out)
    assert os.fsencode(path) in out.read_bytes()


@pytest.mark.parametrize("command", ["attn-map", "reconstruct"])
@pytest.mark.parametrize("kind", ["name_with_newline", "name_not_utf8"])
def test_pictures_of_odd_names(corpus, command, kind, tmp_path):
    result = _invoke(command, corpus.good[kind], "--model", SHIPPED_MODEL, "--device", "cpu",
                     "--out", tmp_path / "pictures")
    assert result.exit_code == 0
    pictures = list((tmp_path / "pictures").iterdir())
    assert len(pictures) == 1 and pictures[0].stat().st_size > 0
    assert "\n" not in pictures[0].name
    if command == "attn-map":
        assert result.stdout.splitlines() == [str(pictures[0])]


def test_all_inputs_bad_exits_1_with_nothing_on_stdout(command_inputs):
    _, bad = command_inputs
    result = _invoke("zero-shot", *bad, "--labels", "a,b", "--model", SHIPPED_MODEL, "--device", "cpu",
                     "--format", "jsonl")
    assert result.exit_code == 1 and result.stdout == ""
    _check_stderr(result, bad)


@pytest.mark.slow
def test_pretrain_on_a_caption_folder_built_from_the_corpus(corpus, tmp_path):
    """Every corpus file with a caption, plus caption problems: the run finishes, skips and counts."""
    import shutil

    data = tmp_path / "data"
    data.mkdir()
    for i, path in enumerate([*corpus.good.values(), *corpus.bad.values()]):
        if not path.is_file() or path.is_symlink():
            continue  # links, pipes and folders are covered by the folder tests above
        target = data / f"{i:02d}{path.suffix}"
        shutil.copyfile(path, target)
        target.with_suffix(".txt").write_text(f"picture number {i}")
    for i in range(40):  # mostly readable data, as a real collection is
        Image.new("RGB", (40, 30), (20 * i, 100, 200 - 10 * i)).save(data / f"ok{i:02d}.png")
        (data / f"ok{i:02d}.txt").write_text(["", "tiny \x07 bell", "مربع آبی 青い四角 🟦", "x " * 300][i % 4])
    config = tmp_path / "cfg.json"
    config.write_text(json.dumps({"preset": "tiny", "model": {"vision": {"depth": 1}, "text": {"layers": 1},
                                                               "head": {"out_dim": 64}},
                                  "train": {"batch_size": 4, "log_every": 1}}))
    out = tmp_path / "run"
    result = _invoke("pretrain", "--data", data, "--config", config, "--steps", "12", "--out", out,
                     "--device", "cpu", "--max-bad-fraction", "0.5")
    assert result.exit_code == 0, result.output
    assert "data: " in result.stderr and "empty_captions" in result.stderr
    report = json.loads((out / "run.json").read_text())["data_report"]
    assert report["empty_captions"] == 10 and report["control_chars"] == 10 and report["truncated_captions"] == 10
    skipped = sum(json.loads(line)["bad_samples"] for line in (out / "metrics.jsonl").read_text().splitlines()[-1:])
    assert skipped >= 1  # some of the unreadable images were drawn and skipped
    assert (out / "model.safetensors").is_file()
