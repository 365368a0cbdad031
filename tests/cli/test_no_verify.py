"""Every command that loads a model folder checks its weights' SHA-256 and takes ``--no-verify``
(issue 19): a weights file with one byte changed is refused in one ``error:`` line, exit 2, as
``zero-shot`` refuses it, and accepted with ``--no-verify``."""

from __future__ import annotations

import dataclasses
import json
import struct
from pathlib import Path

import pytest
import torch
from helpers import cli, small_model_cfg

from detailclip_cli.core.model.detailclip import DetailCLIP
from detailclip_cli.core.store.io import MODEL_FILE, save_model, sha256_file

CHANGED = "has changed since it was saved"


def _one_error(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.startswith("error: ")]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


def flip_one_byte(weights: Path) -> None:
    """Change the lowest mantissa bit of the first float32 weight: the file still parses, every
    weight stays finite, only the checksum can tell."""
    data = bytearray(weights.read_bytes())
    (header_len,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + header_len])
    start = next(v["data_offsets"][0] for k, v in header.items() if k != "__metadata__" and v["dtype"] == "F32")
    data[8 + header_len + start] ^= 1  # little-endian: the first byte holds the lowest mantissa bits
    weights.write_bytes(bytes(data))


@pytest.fixture
def tampered(tmp_path) -> Path:
    torch.manual_seed(0)
    cfg = small_model_cfg()
    cfg = dataclasses.replace(cfg, text=dataclasses.replace(cfg.text, vocab_size=49408))  # the real tokenizer's
    folder = save_model(DetailCLIP(cfg), tmp_path / "model")
    before = sha256_file(folder / MODEL_FILE)
    flip_one_byte(folder / MODEL_FILE)
    assert sha256_file(folder / MODEL_FILE) != before
    return folder


def test_info_refuses_a_changed_weights_file_unless_no_verify(tampered, monkeypatch, capsys):
    code, err = cli(monkeypatch, capsys, "info", tampered, "--format", "json")
    assert code == 2 and CHANGED in _one_error(err) and MODEL_FILE in err
    code, err = cli(monkeypatch, capsys, "info", tampered, "--format", "json", "--no-verify")
    assert code == 0 and "error" not in err


def test_info_no_verify_describes_the_file_as_it_is(tampered, tmp_path, monkeypatch, capsys):
    out = tmp_path / "info.json"
    code, _ = cli(monkeypatch, capsys, "info", tampered, "--format", "json", "--no-verify", "--output", out)
    assert code == 0
    assert json.loads(out.read_text())["weights"]["sha256"] == sha256_file(tampered / MODEL_FILE)


def test_export_refuses_a_changed_weights_file_unless_no_verify(tampered, tmp_path, monkeypatch, capsys):
    out = tmp_path / "exported"
    code, err = cli(monkeypatch, capsys, "export", tampered, "--to", "open_clip", "--out", out)
    assert code == 2 and CHANGED in _one_error(err)
    assert not out.exists()  # refused before anything was written
    code, err = cli(monkeypatch, capsys, "export", tampered, "--to", "open_clip", "--out", out, "--no-verify")
    assert code == 0, err
    assert (out / "open_clip_model.safetensors").is_file()


@pytest.mark.slow
def test_pretrain_init_refuses_a_changed_weights_file_unless_no_verify(tampered, tmp_path, monkeypatch, capsys):
    args = ("pretrain", "--init", tampered, "--out", tmp_path / "run", "--dry-run")
    code, err = cli(monkeypatch, capsys, *args)
    assert code == 2 and CHANGED in _one_error(err)
    code, err = cli(monkeypatch, capsys, *args, "--no-verify")
    assert code == 0 and "error" not in err
    assert not (tmp_path / "run").exists()  # a dry run writes nothing


def test_pretrain_no_verify_needs_init(tmp_path, monkeypatch, capsys):
    code, err = cli(monkeypatch, capsys, "pretrain", "--no-verify", "--out", tmp_path / "run", "--dry-run")
    assert code == 2 and "--no-verify goes with --init" in _one_error(err)


def test_distill_teacher_refuses_a_changed_weights_file_unless_no_verify(tampered, tmp_path, monkeypatch, capsys):
    args = ("distill", "--teacher", tampered, "--out", tmp_path / "run", "--steps", "1", "--batch-size", "4")
    code, err = cli(monkeypatch, capsys, *args)
    assert code == 2 and CHANGED in _one_error(err)
    assert not (tmp_path / "run" / MODEL_FILE).exists()
    code, err = cli(monkeypatch, capsys, *args, "--no-verify")
    assert code == 0, err
    assert (tmp_path / "run" / MODEL_FILE).is_file()  # one step trained from the teacher, saved


def test_distill_no_verify_needs_a_teacher(tmp_path, monkeypatch, capsys):
    code, err = cli(monkeypatch, capsys, "distill", "--no-verify", "--out", tmp_path / "run", "--steps", "1")
    assert code == 2 and "--no-verify goes with --teacher" in _one_error(err)
