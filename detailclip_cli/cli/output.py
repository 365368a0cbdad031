"""Everything a command writes as its result: the formats it offers, the stream (stdout or
``--output``), Rich tables, JSON, JSON lines and CSV, names of written files, and the exit code
that says whether some inputs failed.

Results go to stdout (or ``--output``) and nothing else does, so pipelines get clean data.
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import re
import sys
import time
from collections.abc import Iterator, Sequence
from enum import Enum
from pathlib import Path
from typing import Any

import typer

from detailclip_cli.cli.console import unsafe_char


class TableOrJson(str, Enum):
    table = "table"
    json = "json"


class ResultFormat(str, Enum):
    table = "table"
    json = "json"
    jsonl = "jsonl"
    csv = "csv"


class PictureOrJson(str, Enum):
    png = "png"
    json = "json"


def default_run_dir(command: str) -> Path:
    """``runs/<command>-<date>-<time>``: where a training command writes without ``--out``."""
    return Path("runs") / time.strftime(f"{command}-%Y%m%d-%H%M%S")


def unique_name(path: Path, suffix: str, used: set[str]) -> str:
    """``<stem><suffix>``, with ``-2``, ``-3`` ... added when two inputs share a stem.

    Control characters and undecodable bytes in the stem become ``_``, so each written path
    stays one printable line.
    """
    stem = "".join("_" if unsafe_char(c) else c for c in path.stem) or "image"
    name, n = f"{stem}{suffix}", 1
    while name in used:
        n += 1
        name = f"{stem}-{n}{suffix}"
    used.add(name)
    return name


@contextlib.contextmanager
def open_output(output: Path | None) -> Iterator:
    """The results stream: ``--output`` (created with its folder) or stdout.

    File names are bytes on POSIX, and one that is not UTF-8 reaches Python with lone
    surrogates; both streams write those back as the original bytes (as ``ls`` does), where a
    strict UTF-8 stdout would fail the whole result on one odd name.
    """
    if output is None:
        stream = sys.stdout
        if getattr(stream, "errors", None) == "strict" and hasattr(stream, "reconfigure"):
            with contextlib.suppress(Exception):
                stream.reconfigure(errors="surrogateescape")
        yield stream
        return
    output.parent.mkdir(parents=True, exist_ok=True)
    with open(output, "w", encoding="utf-8", errors="surrogateescape", newline="") as f:
        yield f


def print_tables(tables: Sequence, output: Path | None) -> None:
    """Render Rich tables for people, to stdout or a file (plain text there)."""
    from rich.console import Console

    with open_output(output) as stream:
        console = Console(file=stream, width=120 if output else None, no_color=output is not None)
        for table in tables:
            console.print(table)


# A JSON list of numbers, booleans or nulls as json.dumps(indent=2) spreads it, one item a line.
# Real line breaks never occur inside JSON strings, so this cannot touch string contents.
_SCALAR = r"(?:-?[0-9][0-9.eE+-]*|true|false|null)"
_SCALAR_LIST = re.compile(r"\[\n\s*" + _SCALAR + r"(?:,\n\s*" + _SCALAR + r")*\n\s*\]")


def finite_json(document: Any) -> Any:
    """``document`` with every NaN or infinite float replaced by None (JSON's null): JSON has no
    NaN, and a result must parse in any JSON reader."""
    if isinstance(document, float):
        return document if math.isfinite(document) else None
    if isinstance(document, dict):
        return {k: finite_json(v) for k, v in document.items()}
    if isinstance(document, (list, tuple)):
        return [finite_json(v) for v in document]
    return document


def write_json(document: Any, output: Path | None) -> None:
    """One indented JSON document; lists of numbers stay on one line, so grids read as grids."""
    text = json.dumps(finite_json(document), indent=2, allow_nan=False)
    text = _SCALAR_LIST.sub(lambda m: "[" + ", ".join(x.strip() for x in m.group(0)[1:-1].split(",")) + "]", text)
    with open_output(output) as stream:
        stream.write(text + "\n")


def write_jsonl(records: Sequence[dict], output: Path | None) -> None:
    """One JSON object per line."""
    with open_output(output) as stream:
        for record in records:
            stream.write(json.dumps(finite_json(record), allow_nan=False) + "\n")


def write_csv(header: Sequence[str], rows: Sequence[Sequence], output: Path | None) -> None:
    """A header line and the rows."""
    with open_output(output) as stream:
        writer = csv.writer(stream, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)


def finish(failed: int) -> None:
    """Exit 1 when some inputs failed (each was already named on stderr)."""
    if failed:
        raise typer.Exit(code=1)
