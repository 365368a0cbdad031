"""What every data format gives: :class:`Sample` records in a :class:`SampleList` that carries
the :class:`ReadReport` of the read, and :class:`DataError` for data that cannot be used.

Messages name files through :func:`printable`, so a file name holding a newline or bytes that
are not UTF-8 still gives one line.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from detailclip_cli.errors import UsageError


class DataError(UsageError, ValueError):
    """Data that cannot be used; the message is one line for people."""


@dataclass
class ReadReport:
    """What reading a data set skipped or repaired; every count is a number of samples or rows.

    Attributes:
        samples: samples returned.
        empty_captions: skipped, their caption was empty or only whitespace (after cleaning).
        unreadable_captions: skipped, their ``.txt`` caption file could not be read.
        invalid_utf8: kept, their caption held bytes that are not UTF-8 (each became U+FFFD).
        control_chars: kept, their caption held control characters (each became a space).
        missing_images: skipped, a table row with an empty image cell or a path to no file.
        duplicates: dropped, a table row repeating an earlier row's image, caption and label
            (the same image with another caption is kept, as in COCO's five captions an image).
        truncated_captions: captions whose tokens fill the whole text context, so any longer
            text was cut; counted by ``TwoViewDataset.data_report`` (the reader has no tokenizer).
        failed_shards: streamed tar shards (``pipe:``, ``http(s)://``, ``.tar.gz``) that failed
            while they were counted; each keeps the samples it gave and is one bad sample per pass.
        examples: for each count above that is not zero, where its first case is (one line).
    """

    samples: int = 0
    empty_captions: int = 0
    unreadable_captions: int = 0
    invalid_utf8: int = 0
    control_chars: int = 0
    missing_images: int = 0
    duplicates: int = 0
    truncated_captions: int = 0
    failed_shards: int = 0
    examples: dict[str, str] = field(default_factory=dict)

    def note(self, kind: str, example: str) -> None:
        """Count one case of ``kind`` (a count attribute); the first one becomes its example."""
        setattr(self, kind, getattr(self, kind) + 1)
        self.examples.setdefault(kind, example)

    def counts(self) -> dict[str, int]:
        """Every count by name, ``samples`` first: ready for a metrics line."""
        return {k: v for k, v in asdict(self).items() if k != "examples"}

    @property
    def skipped(self) -> int:
        """Samples or rows left out: empty or unreadable captions, missing images, duplicates."""
        return self.empty_captions + self.unreadable_captions + self.missing_images + self.duplicates

    def summary(self) -> str:
        """One line naming each non-zero count but ``samples``, e.g. ``2 empty_captions (e.g. a.txt)``;
        empty when nothing was skipped, repaired or truncated."""
        parts = [f"{n} {k}" + (f" (e.g. {self.examples[k]})" if k in self.examples else "")
                 for k, n in self.counts().items() if k != "samples" and n]
        return ", ".join(parts)


@dataclass(frozen=True)
class Sample:
    """One training or evaluation example.

    Attributes:
        image: path of the image file.
        caption: its caption (for class folders, built from the class template).
        label: class name, when known.
        mask: path of a per-pixel class map (0 = background, k + 1 = class k), when there is one.
    """

    image: Path
    caption: str
    label: str | None = None
    mask: Path | None = None


class SampleList(list):
    """A list of :class:`Sample` that also carries the :class:`ReadReport` of the read that made it.

    It compares, iterates and slices as a plain list (slices are plain lists, without a report).
    It is the map-style source of :func:`~detailclip_cli.core.data.sources.open_source`.

    Attributes:
        report: what was skipped or repaired while reading.
        chiral: whether a mirrored image would contradict its caption (the demo set's digits),
            so training must not flip its views.
    """

    def __init__(self, samples: Iterable = (), report: ReadReport | None = None, *, chiral: bool = False) -> None:
        super().__init__(samples)
        self.report = report if report is not None else ReadReport(samples=len(self))
        self.chiral = chiral


def printable(path: str | Path) -> str:
    """``path`` for a one-line message: control characters (a newline in a file name) and lone
    surrogates (bytes of a file name that are not UTF-8) escaped as Python writes them."""
    text = str(path)
    if not any(unicodedata.category(c) in ("Cc", "Cs") for c in text):
        return text
    return "".join(c.encode("unicode_escape", "backslashreplace").decode("ascii")
                   if unicodedata.category(c) in ("Cc", "Cs") else c for c in text)


def one_line(error: object) -> str:
    """An error's text as one printable line (whitespace runs, line breaks included, become a space)."""
    return printable(" ".join(str(error).split()))
