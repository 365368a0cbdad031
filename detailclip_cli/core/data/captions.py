"""Captions made safe to tokenise, from caption files, table cells and shard members alike.

A caption whose text is empty after cleaning is skipped; one whose bytes were repaired is kept.
Both are counted in the read's :class:`ReadReport`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import NamedTuple

from detailclip_cli.core.data.samples import ReadReport, one_line, printable
from detailclip_cli.core.data.walk import not_a_file

# C0 and C1 control characters and DEL, but the tab and line breaks, which are plain whitespace.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
# Lone surrogates: what undecodable bytes become under errors="surrogateescape" (and never text).
_SURROGATE = re.compile(r"[\ud800-\udfff]")


class CleanCaption(NamedTuple):
    """A caption made safe to tokenise (see :func:`clean_caption`)."""

    text: str
    invalid_utf8: bool
    control_chars: bool


def clean_caption(raw: str | bytes) -> CleanCaption:
    """One line of caption text, safe to tokenise, from a caption file's bytes or a table cell.

    Bytes are decoded as UTF-8 (a leading byte-order mark dropped). Bytes that are not UTF-8,
    and lone surrogates in text (what ``errors="surrogateescape"`` makes of such bytes), become
    U+FFFD. Control characters become spaces, and every run of whitespace (line breaks
    included) one space, trimmed. Everything else is kept as it is: any script, emoji with
    their joiners, combining and right-to-left marks.

    Args:
        raw: the caption as read.

    Returns:
        The text (``""`` when nothing but whitespace is left) and whether invalid UTF-8 or
        control characters (other than tab, CR and LF) were replaced.
    """
    invalid = False
    if isinstance(raw, bytes):
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError:
            text, invalid = raw.decode("utf-8-sig", errors="replace"), True
    else:
        text = raw
    text, n_surrogates = _SURROGATE.subn("\ufffd", text)
    text, n_controls = _CONTROL.subn(" ", text)
    return CleanCaption(" ".join(text.split()), invalid or n_surrogates > 0, n_controls > 0)


def accept_caption(raw: str | bytes, where: str, report: ReadReport) -> str | None:
    """The cleaned caption, counted in ``report``; None (counted as empty) when nothing is left.

    Args:
        raw: the caption as read.
        where: what the report's example calls it (a file, or a table's line).
        report: counts what was skipped or repaired.
    """
    cleaned = clean_caption(raw)
    if not cleaned.text:
        report.note("empty_captions", where)
        return None
    if cleaned.invalid_utf8:
        report.note("invalid_utf8", where)
    if cleaned.control_chars:
        report.note("control_chars", where)
    return cleaned.text


def read_caption(path: Path, report: ReadReport) -> str | None:
    """The cleaned caption in a ``.txt`` file; None (counted in ``report``) when it cannot be
    read or is empty."""
    problem = not_a_file(path)
    if problem is None:
        try:
            raw = path.read_bytes()
        except OSError as e:
            problem = one_line(e.strerror or e)
    if problem is not None:
        reason = "No such file or directory" if problem == "missing" else problem
        report.note("unreadable_captions", f"{printable(path)}: {reason}")
        return None
    return accept_caption(raw, printable(path), report)
