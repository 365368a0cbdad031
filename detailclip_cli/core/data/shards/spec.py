"""What a shard spec names: a brace pattern, one ``.tar`` file, or a folder of shards; or shards
read as streams: ``pipe:COMMAND``, ``http(s)://`` URLs and ``.tar.gz`` / ``.tgz`` files (brace
patterns work in all three: ``pipe:cat s/{000..009}.tar`` runs one command per shard).

A folder is a folder of shards when its top level (its ``train/`` sub-folder first, when it
has one, as for image folders) holds ``.tar`` files and, besides them, only files that belong
to them: ``shards.json`` (written by ``detailclip shard``), and each shard's sidecars as
img2dataset and DALI write them (``00000.parquet``, ``00000_stats.json``, ``00000.idx`` beside
``00000.tar``), which the reader never opens. Anything else there (another file, a sub-folder)
makes it an image folder, read as such.
"""

from __future__ import annotations

import os
import re
from glob import glob
from pathlib import Path

from detailclip_cli.core.data.samples import DataError, printable
from detailclip_cli.core.data.shards.location import (
    GZIP_SUFFIXES,
    PIPE_PREFIX,
    URL_PREFIXES,
    StreamedShard,
    streamed_shard,
)

# A shard: a plain tar file read in place, or one read front to back.
Shard = Path | StreamedShard

INDEX_FILE = "shards.json"
# Files a shard may have beside it, named by its stem: img2dataset's metadata table and
# per-shard statistics, and DALI's index.
SIDECAR_SUFFIXES = (".parquet", "_stats.json", ".idx")


def expand_braces(pattern: str) -> list[str]:
    """Expand ``{a,b}`` lists and ``{000..099}`` ranges (zero padding kept), as ``braceexpand`` does.

    Several braces multiply out left to right; text without braces is returned as it is.

    Example:
        ``expand_braces("s/{00..02}.tar") == ["s/00.tar", "s/01.tar", "s/02.tar"]``
    """
    match = re.search(r"\{([^{}]*)\}", pattern)
    if match is None:
        return [pattern]
    head, body, tail = pattern[:match.start()], match.group(1), pattern[match.end():]
    numeric = re.fullmatch(r"(-?\d+)\.\.(-?\d+)", body)
    if numeric:
        lo, hi = numeric.groups()
        width = max(len(lo), len(hi)) if lo.startswith("0") or hi.startswith("0") else 0
        step = 1 if int(hi) >= int(lo) else -1
        choices = [str(n).zfill(width) for n in range(int(lo), int(hi) + step, step)]
    elif "," in body:
        choices = body.split(",")
    else:
        choices = ["{" + body + "}"]  # a literal brace pair, as the shell leaves it
        return [head + choices[0] + rest for rest in expand_braces(tail)]
    return [expanded for choice in choices for expanded in expand_braces(head + choice + tail)]


def _is_tar(entry: Path) -> bool:
    return entry.suffix.lower() == ".tar"


def _holds_shards(entries: list[Path]) -> bool:
    """Whether a folder's (non-hidden) entries are shards, and files that belong to them only."""
    stems = {e.name[:-len(".tar")] for e in entries if _is_tar(e)}
    if not stems:
        return False

    def belongs(entry: Path) -> bool:
        name = entry.name
        return (_is_tar(entry) or name == INDEX_FILE
                or any(name.endswith(s) and name[:-len(s)] in stems for s in SIDECAR_SUFFIXES))

    return all(belongs(e) and not e.is_dir() for e in entries)


def shard_folder(path: Path, split: str) -> Path | None:
    """The folder of shards ``path`` names (its ``split`` sub-folder first), or None."""
    for folder in ([path / split] if split else []) + [path]:
        try:
            entries = [e for e in folder.iterdir() if not e.name.startswith(".")]
        except OSError:
            continue
        if _holds_shards(entries):
            return folder
    return None


def is_shard_spec(data: str | Path, *, split: str = "train") -> bool:
    """Whether a data spec names tar shards: a pattern or file ending in ``.tar``, ``.tar.gz`` or
    ``.tgz``, a folder of ``.tar`` files, a ``pipe:`` command, or an ``http(s)://`` URL."""
    text = str(data)
    if text == "demo":
        return False
    if text.startswith(PIPE_PREFIX) or text.lower().startswith(URL_PREFIXES):
        return True
    if text.lower().endswith((".tar", *GZIP_SUFFIXES)):
        return True
    path = Path(text).expanduser()
    return path.is_dir() and shard_folder(path, split) is not None


def streams_shards(data: str | Path, *, samples_per_epoch: int = 0, split: str = "train") -> bool:
    """:func:`is_shard_spec` for a training run, which refuses ``samples_per_epoch`` for other data.

    Raises:
        DataError: ``samples_per_epoch`` was given for data that is not tar shards.
    """
    shards = is_shard_spec(data, split=split)
    if samples_per_epoch and not shards:
        raise DataError("--samples-per-epoch is for tar shards; other data is read whole each epoch")
    return shards


def shard_paths(spec: str | Path, *, split: str = "train") -> list[Shard]:
    """The shards a spec names, in order (sorted for a folder, pattern order otherwise): a
    :class:`~pathlib.Path` for each plain ``.tar`` file, a
    :class:`~detailclip_cli.core.data.shards.location.StreamedShard` for each command, URL or
    gzip-compressed file.

    Raises:
        DataError: a named local shard does not exist, or the spec names none.
    """
    text = str(spec)
    if text.startswith(PIPE_PREFIX) or text.lower().startswith(URL_PREFIXES):
        names = expand_braces(text)
        if text.startswith(PIPE_PREFIX) and not all(n[len(PIPE_PREFIX):].strip() for n in names):
            raise DataError(f"{printable(text)} names no command (write pipe:COMMAND, e.g. pipe:cat shard.tar)")
        return [streamed_shard(name) for name in names]
    path = Path(text).expanduser()
    if not text.lower().endswith((".tar", *GZIP_SUFFIXES)) and path.is_dir():
        folder = shard_folder(path, split)
        if folder is None:
            raise DataError(f"no .tar shards in {printable(path)}")
        return sorted(e for e in folder.iterdir() if _is_tar(e) and not e.name.startswith("."))
    paths: list[Path] = []
    for name in expand_braces(text):
        name = os.path.expanduser(name)
        if any(c in name for c in "*?["):
            paths += [Path(p) for p in sorted(glob(name))]
        else:
            paths.append(Path(name))
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise DataError(f"shard not found: {printable(missing[0])}"
                        + (f" ({len(missing)} of the {len(paths)} shards named by {printable(text)} are missing)"
                           if len(paths) > 1 else ""))
    if not paths:
        raise DataError(f"no shards match {printable(text)}")
    return [streamed_shard(str(p)) if p.name.lower().endswith(GZIP_SUFFIXES) else p for p in paths]
