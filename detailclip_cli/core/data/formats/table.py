"""A ``.csv`` / ``.tsv`` table with an image-path column and a caption column (and optionally a
label column); relative paths are relative to the table's folder.

Bad rows do not abort the table: a row naming no existing image is skipped, a caption empty
after cleaning skips its row, and an exact repeat of an earlier row is dropped, each counted in
the :class:`ReadReport`. Only a table with nothing usable left is an error.

Read for its images only (``images_only``, as ``distill`` reads data), the caption and label
columns are not read at all: a row with an empty or missing caption keeps its image, each image
is kept once (a repeat is counted as a duplicate), and every sample's caption is empty, as
:func:`~detailclip_cli.core.data.formats.folder.read_image_folder` gives a folder's images.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

from detailclip_cli.core.data.captions import accept_caption, clean_caption
from detailclip_cli.core.data.samples import (
    DataError,
    ReadReport,
    Sample,
    SampleList,
    one_line,
    printable,
)

TABLE_SUFFIXES = (".csv", ".tsv")


def read_table(path: Path, *, image_column: str, caption_column: str, label_column: str | None,
               images_only: bool = False) -> SampleList:
    """The samples of a table, in file order.

    Args:
        path: the ``.csv`` or ``.tsv`` file (any other suffix is sniffed for its delimiter).
        image_column: the column holding image paths.
        caption_column: the column holding captions (not read with ``images_only``).
        label_column: the column holding class names, if any (not read with ``images_only``).
        images_only: read the images alone, each once, with empty captions (see the module
            docstring); only ``image_column`` must exist.

    Raises:
        DataError: the table is empty, unreadable, lacks a column, or has no usable row.
    """
    shown = printable(path)
    report = ReadReport()
    samples = SampleList(report=report)
    seen: set[tuple[str, str, str | None]] = set()
    reader = None
    try:
        # surrogateescape: a stray non-UTF-8 byte costs one caption a U+FFFD (counted), not the
        # whole table, and a path cell keeps the exact bytes of a file name.
        with open(path, newline="", encoding="utf-8-sig", errors="surrogateescape") as f:
            head = f.read(16384)
            if not head.strip():
                raise DataError(f"table is empty: {shown}")
            f.seek(0)
            reader = csv.DictReader(f, delimiter=_detect_delimiter(path, head))
            columns = list(reader.fieldnames or [])
            wanted = [image_column] if images_only else [image_column, caption_column] + (
                [label_column] if label_column else [])
            for column in wanted:
                if column not in columns:
                    raise DataError(f"column {column!r} not found in {shown}; columns are: {_list_columns(columns)}")
            for row in reader:
                where = f"{shown} line {reader.line_num}"
                raw = (row.get(image_column) or "").strip()
                if not raw:
                    report.note("missing_images", f"{where}: empty {image_column!r}")
                    continue
                image = _table_path(raw, path.parent)
                if not image.is_file():
                    report.note("missing_images", f"{where}: {printable(image)}")
                    continue
                caption, label = "", None  # images only: never read, so an empty caption cannot cost the image
                if not images_only:
                    caption = accept_caption(row.get(caption_column) or "", where, report)
                    if caption is None:
                        continue
                    if label_column:
                        label = clean_caption(row.get(label_column) or "").text or None
                key = (os.path.normpath(image), caption, label)
                if key in seen:
                    report.note("duplicates", where)
                    continue
                seen.add(key)
                samples.append(Sample(image=image, caption=caption, label=label))
    except OSError as e:
        raise DataError(f"cannot read table {shown}: {one_line(e.strerror or e)}") from None
    except csv.Error as e:
        line = f" line {reader.line_num}" if reader is not None else ""
        raise DataError(f"{shown}{line}: not a readable table ({one_line(e)})") from None
    report.samples = len(samples)
    if not samples:
        if not report.skipped:
            raise DataError(f"table has a header but no rows: {shown}")
        hint = " (relative image paths are read from the table's folder)" if report.missing_images else ""
        raise DataError(f"no usable rows in {shown}: {report.summary()}{hint}")
    return samples


def _detect_delimiter(path: Path, head: str) -> str:
    if path.suffix.lower() == ".tsv":
        return "\t"
    try:
        return csv.Sniffer().sniff(head, delimiters=",\t;|").delimiter
    except Exception:  # the sniffer's guesswork can fail in more ways than csv.Error
        return ","


def _table_path(raw: str, base: Path) -> Path:
    """A table cell as a path; relative paths are relative to the table's folder."""
    image = Path(raw)
    if raw.startswith("~"):
        try:
            image = image.expanduser()
        except RuntimeError:  # ~user that does not exist: leave the name as it is
            pass
    return image if image.is_absolute() else base / image


def _list_columns(columns: list[str], limit: int = 20) -> str:
    shown = ", ".join(map(repr, columns[:limit]))
    return shown + (f", ... ({len(columns)} in all)" if len(columns) > limit else "")
