"""The README's "Pipelines" examples, run as written with bash on a small folder of demo images.

The fenced ``bash`` block under ``## Pipelines`` in README.md is the source: each line runs in a
temporary folder holding ``photos/`` (demo images, no masks) and ``captions.txt`` (their
captions), with this environment's ``detailclip`` first on ``PATH``. What each line writes is
checked by what its options say (``--output``, ``--format``, ``--top-k``, a ``> FILE``
redirect), so the test follows the README when its lines change. Lines piping into ``jq`` are
skipped when jq is not installed.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

README = Path(__file__).resolve().parents[2] / "README.md"
SECTION = "## Pipelines"
IMAGES = 8  # demo validation images: two of each pattern


def pipeline_lines(readme: str) -> list[str]:
    """The commands of the first fenced block under :data:`SECTION` (continuations joined,
    blank lines and comments dropped).

    Raises:
        AssertionError: the README has no such section or block.
    """
    start = readme.find("\n" + SECTION + "\n")
    assert start >= 0, f"README.md has no {SECTION!r} section"
    section = readme[start + len(SECTION) + 2:]
    section = section[:section.find("\n## ")] if "\n## " in section else section
    block = re.search(r"```(?:bash|sh|console)?\n(.*?)```", section, re.S)
    assert block is not None, f"the {SECTION!r} section has no fenced code block"
    text = block.group(1).replace("\\\n", " ")
    return [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]


def _option(line: str, name: str) -> str | None:
    """The value after the first ``name`` in a command line (pipes included), or None."""
    words = shlex.split(line)
    return words[words.index(name) + 1] if name in words[:-1] else None


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """``photos/*.png`` (demo validation images named ``<class>_<id>.png``) and ``captions.txt``."""
    from detailclip_cli.core.data.demo import generate_demo

    root = tmp_path_factory.mktemp("pipelines")
    demo = root / "demo"
    demo.mkdir()
    generate_demo(demo, sizes={"val": IMAGES})
    photos = root / "photos"
    photos.mkdir()
    captions = []
    for image in sorted((demo / "val").glob("*/*.png")):
        if image.name.endswith(".mask.png"):
            continue
        shutil.copy(image, photos / f"{image.parent.name}_{image.name}")
        captions.append(image.with_suffix(".txt").read_text().strip())
    (root / "captions.txt").write_text("\n".join(captions) + "\n")
    shutil.rmtree(demo)
    return root


def test_readme_pipelines_name_real_commands():
    """Every ``detailclip`` command a pipeline line runs exists, and the block is not empty."""
    from detailclip_cli.cli import app
    from typer.main import get_command

    commands = set(get_command(app).commands)
    lines = pipeline_lines(README.read_text(encoding="utf-8"))
    assert len(lines) >= 3
    for line in lines:
        used = re.findall(r"(?:^|\|)\s*detailclip\s+([\w-]+)", line)
        assert used, f"a pipeline line that runs no detailclip command: {line}"
        assert set(used) <= commands, line


def _run(line: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "OMP_NUM_THREADS": "1"}
    return subprocess.run(["bash", "-c", line], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def _check_output_file(line: str, path: Path, photos: set[str], captions: list[str]) -> None:
    """An embedding file: one unit row per input, ids the photos' paths or the caption texts."""
    from detailclip_cli.core.use.embfile import read_embeddings

    rows = read_embeddings(path)
    norms = rows.embeddings.float().norm(dim=-1)
    assert torch.allclose(norms, torch.ones_like(norms), atol=1e-4), line
    if "--texts" in line:
        assert list(rows.ids) == captions, line
    else:
        assert {str(Path(i)) for i in rows.ids} == photos, line


def _check_search(line: str, out: str, photos: set[str]) -> None:
    results = [json.loads(row) for row in out.splitlines() if row.strip()]
    top_k = int(_option(line, "--top-k") or _option(line, "-k") or 10)
    assert len(results) == min(top_k, len(photos)), line
    assert [r["rank"] for r in results] == list(range(1, len(results) + 1))
    scores = [r["score"] for r in results]
    assert scores == sorted(scores, reverse=True), line
    assert {str(Path(r["id"])) for r in results} <= photos, line


def _check_csv(line: str, text: str, photos: set[str]) -> None:
    table = list(csv.DictReader(io.StringIO(text)))
    labels = set((_option(line, "--labels") or "").split(","))
    assert table, line
    assert {str(Path(r["path"])) for r in table} == photos, line
    assert {r["label"] for r in table} <= labels, line


@pytest.mark.slow
def test_readme_pipelines_run(workdir):
    """Each README pipeline line exits 0 and writes what its options promise."""
    lines = pipeline_lines(README.read_text(encoding="utf-8"))
    photos = {str(Path("photos") / p.name) for p in (workdir / "photos").glob("*.png")}
    captions = (workdir / "captions.txt").read_text().splitlines()
    ran = 0
    for line in lines:
        if re.search(r"\|\s*jq\b", line) and shutil.which("jq") is None:
            continue
        result = _run(line, workdir)
        assert result.returncode == 0, f"{line}\n{result.stderr}"
        assert "Traceback" not in result.stderr, f"{line}\n{result.stderr}"
        ran += 1
        output = _option(line, "--output") or _option(line, "-o")
        if output and output != "-":
            _check_output_file(line, workdir / output, photos, captions)
        redirect = re.search(r">\s*(\S+)\s*$", line)
        stdout = (workdir / redirect.group(1)).read_text() if redirect else result.stdout
        if re.search(r"detailclip search\b", line) and "--format jsonl" in line and not re.search(r"\|\s*jq", line):
            _check_search(line, stdout, photos)
        elif re.search(r"\|\s*jq -r \.id\b", line):
            assert {str(Path(i)) for i in stdout.split()} <= photos and stdout.split(), line
        if "--format csv" in line:
            _check_csv(line, stdout, photos)
    assert ran >= 3
