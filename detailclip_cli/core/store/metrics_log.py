"""The metrics log, ``metrics.jsonl``: one JSON object a logged step, each with its ``step``.

A line is appended whole or not at all, and a reader skips a line a crash tore. File names are
not known here: a run folder's log is :attr:`RunFolder.metrics_file
<detailclip_cli.core.store.run.RunFolder.metrics_file>`, which is what writes it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from detailclip_cli.errors import UsageError


def read_metrics(path: Path, *, strict: bool = False) -> list[dict[str, Any]]:
    """The rows of a ``metrics.jsonl`` file, in order; blank lines are skipped.

    Args:
        path: the file (a run folder's :attr:`RunFolder.metrics_file`, or a copy of one).
        strict: a line that is not a JSON object with a ``step`` raises; otherwise such a line
            (one torn by a crash in mid-write) is skipped.

    Raises:
        UsageError: with ``strict``, naming the file and line.
    """
    rows = []
    for n, line in enumerate(Path(path).read_text(errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            if strict:
                raise UsageError(f"{path}:{n} is not a JSON line") from None
            continue
        if not isinstance(row, dict) or "step" not in row:
            if strict:
                raise UsageError(f"{path}:{n} has no 'step' (not a detailclip metrics.jsonl?)")
            continue
        rows.append(row)
    return rows


def append_row(path: Path, row: dict[str, Any]) -> None:
    """Add ``row`` as one line at the end of ``path`` (created if missing), whole or not at all.

    Raises:
        OSError: the line could not be written (e.g. a full disk); the part written is cut off
            again first, so no torn line is left.
    """
    line = (json.dumps(row) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        size = os.fstat(fd).st_size
        try:
            view = memoryview(line)
            while view:
                view = view[os.write(fd, view):]
        except OSError:
            try:
                os.ftruncate(fd, size)  # freeing space, never needing any
            except OSError:
                pass
            raise
    finally:
        os.close(fd)


def lines_through(path: Path, step: int) -> list[str]:
    """The lines of ``path`` logged at ``step`` or before, in order; a torn line is left out."""
    kept = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and isinstance(record.get("step"), int) and record["step"] <= step:
            kept.append(line)
    return kept
