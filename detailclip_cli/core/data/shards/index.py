"""Counting shards: their samples, from the tar headers (no image data) or from ``shards.json``.

The stream needs each shard's sample count: it is taken from ``shards.json`` beside the shards
(written by :func:`~detailclip_cli.core.data.shards.write.write_shards`) when its byte size for
that shard still matches, else counted by reading the tar headers. A shard that is not an
intact uncompressed tar (not a tar, truncated, garbage after its last member) is a one-line
:class:`DataError` naming it.
"""

from __future__ import annotations

import dataclasses
import json
import posixpath
import tarfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from detailclip_cli.core.data.samples import DataError, printable
from detailclip_cli.core.data.shards.spec import INDEX_FILE, shard_paths
from detailclip_cli.core.data.walk import IMAGE_EXTENSIONS

INDEX_FORMAT = "detailclip-shards"
# Image extensions in order of preference, when a sample has several: webdataset's usual four,
# then whatever else the folder reader takes.
USUAL_IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
IMAGE_EXTS = USUAL_IMAGE_EXTS + tuple(sorted({e.lstrip(".") for e in IMAGE_EXTENSIONS} - set(USUAL_IMAGE_EXTS)))


class Member(NamedTuple):
    """Where one file of a sample lies in its shard."""

    offset: int
    size: int


def _split_name(name: str) -> tuple[str, str]:
    """A member name as webdataset reads it: ``dir/abc.seg.png`` -> (``dir/abc``, ``seg.png``)."""
    folder, base = posixpath.split(name)
    stem, _, ext = base.partition(".")
    return posixpath.join(folder, stem), ext.lower()


def tar_groups(tar: tarfile.TarFile) -> Iterator[tuple[str, dict[str, Member]]]:
    """The samples of an open tar, in order: ``(key, {extension: Member})``; headers only are read."""
    key, members = None, {}
    for info in tar:
        if not info.isfile() or posixpath.basename(info.name).startswith("."):
            continue
        k, ext = _split_name(info.name)
        if k != key:
            if key is not None:
                yield key, members
            key, members = k, {}
        members.setdefault(ext, Member(info.offset_data, info.size))
    if key is not None:
        yield key, members


def image_ext(members: dict[str, Member]) -> str | None:
    """The extension of a sample's image member (the first of :data:`IMAGE_EXTS` it has), or None."""
    return next((ext for ext in IMAGE_EXTS if ext in members), None)


@dataclass
class ShardInfo:
    """What a shard holds, from its tar headers.

    Attributes:
        name: the file name.
        bytes: its size (an index entry is trusted only while this matches).
        samples: samples (member groups), good or not: the slots of the stream.
        no_image: samples without an image member.
        no_caption: samples without a ``.txt`` or ``.json`` member.
        incomplete: samples without an image or without a caption member, or both.
        examples: the key of the first sample without an image, and without a caption.
    """

    name: str
    bytes: int
    samples: int
    no_image: int = 0
    no_caption: int = 0
    incomplete: int = 0
    examples: dict[str, str] = field(default_factory=dict)


def _tar_problem(path: Path, tar: tarfile.TarFile, end: int, size: int) -> str | None:
    """Why a tar that read without error is still damaged: data past its end, no end-of-archive
    blocks (zeros), or garbage after the last member.

    Python's tarfile ends an archive quietly at an unreadable header, so a shard cut short or
    overwritten in the middle would just look smaller.
    """
    if end > size:
        return f"truncated ({size} bytes, its members need {end})"
    rest = size - tar.offset
    if rest < tarfile.BLOCKSIZE:
        return f"truncated (it ends after {size} bytes without the end-of-archive blocks)"
    if rest > 2**20:
        return f"unreadable after byte {tar.offset} of {size}"
    with open(path, "rb") as f:
        f.seek(tar.offset)
        if f.read(rest).strip(b"\0"):
            return f"unreadable after byte {tar.offset} of {size}"
    return None


def scan_shard(path: Path) -> ShardInfo:
    """Count a shard's samples by reading its tar headers.

    Raises:
        DataError: the file cannot be read or is not an intact uncompressed tar (one line naming it).
    """
    shown = printable(path)
    info = ShardInfo(name=path.name, bytes=0, samples=0)
    try:
        info.bytes = path.stat().st_size
        end = 0
        with tarfile.open(path, "r:") as tar:
            for key, members in tar_groups(tar):
                info.samples += 1
                end = max(end, *(m.offset + m.size for m in members.values()))
                if image_ext(members) is None:
                    info.no_image += 1
                    info.examples.setdefault("no_image", key)
                if "txt" not in members and "json" not in members:
                    info.no_caption += 1
                    info.examples.setdefault("no_caption", key)
                info.incomplete += image_ext(members) is None or ("txt" not in members and "json" not in members)
            problem = _tar_problem(path, tar, end, info.bytes)
    except (tarfile.TarError, EOFError) as e:
        raise DataError(f"shard {shown} is not a readable uncompressed tar ({' '.join(str(e).split())})") from None
    except OSError as e:
        raise DataError(f"cannot read shard {shown}: {e.strerror or e}") from None
    if problem:
        raise DataError(f"shard {shown} is damaged: {problem}; write it again or leave it out")
    return info


def _read_index(folder: Path) -> dict[str, dict]:
    """The entries of ``folder/shards.json`` by shard name; empty when there is no usable index."""
    try:
        index = json.loads((folder / INDEX_FILE).read_text())
        if index.get("format") == INDEX_FORMAT:
            return {entry["name"]: entry for entry in index["shards"]}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        pass
    return {}


def shard_infos(paths: Sequence[Path]) -> list[ShardInfo]:
    """Each shard's :class:`ShardInfo`: from the index beside it when it matches the file, else scanned."""
    indexes: dict[Path, dict[str, dict]] = {}
    infos = []
    for path in paths:
        entries = indexes.setdefault(path.parent, _read_index(path.parent))
        entry = entries.get(path.name)
        try:
            size = path.stat().st_size
        except OSError as e:
            raise DataError(f"cannot read shard {printable(path)}: {e.strerror or e}") from None
        if entry is not None and entry.get("bytes") == size:
            fields = {f.name for f in dataclasses.fields(ShardInfo)}
            infos.append(ShardInfo(**{k: v for k, v in entry.items() if k in fields}))
        else:
            infos.append(scan_shard(path))
    return infos


def epoch_samples(spec: str | Path, *, samples_per_epoch: int = 0, split: str = "train") -> int:
    """Samples in one epoch of a shard spec: ``samples_per_epoch`` when given, else all of them."""
    if samples_per_epoch:
        return int(samples_per_epoch)
    return sum(info.samples for info in shard_infos(shard_paths(spec, split=split)))
