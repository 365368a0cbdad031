"""Counting shards: their samples, from the tar headers (no image data) or from ``shards.json``.

The stream needs each shard's sample count: it is taken from ``shards.json`` beside the shards
(written by :func:`~detailclip_cli.core.data.shards.write.write_shards`) when its byte size for
that shard still matches, else counted by reading the tar headers. A shard that is not an
intact uncompressed tar (not a tar, truncated, garbage after its last member) is a one-line
:class:`DataError` naming it.

A streamed shard (a command, a URL, a gzip-compressed file) is counted by streaming it once
(headers only are looked at), unless ``shards.json`` beside it lists it: for a gzip file with
its byte size, for URLs in the same folder (fetched once per folder, trusted by name). One that
fails while it is counted is not fatal: it keeps the samples it gave before failing plus one
slot for the failure, which becomes a bad sample each time the shard is read.
"""

from __future__ import annotations

import dataclasses
import http.client
import json
import os
import posixpath
import tarfile
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from detailclip_cli.core.data.samples import DataError, printable
from detailclip_cli.core.data.shards.location import (
    URL_TIMEOUT,
    StreamedShard,
    StreamFailed,
)
from detailclip_cli.core.data.shards.spec import INDEX_FILE, Shard, shard_paths
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


def tar_groups(tar: Iterable[tarfile.TarInfo]) -> Iterator[tuple[str, dict[str, Member]]]:
    """The samples of an open tar (or of its members' headers, in order), in order:
    ``(key, {extension: Member})``; headers only are read."""
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


def stream_groups(shard: StreamedShard, want: Callable[[int], bool], *, max_bytes: int
                  ) -> Iterator[tuple[str, dict[str, Member], dict[str, bytes]]]:
    """The samples of a streamed shard, in order: ``(key, {extension: Member}, {extension: data})``.

    The data of sample ``j`` (counting from 0) is read, as it streams by, only when ``want(j)``,
    and only for members of at most ``max_bytes``; other members are streamed past.

    Raises:
        StreamFailed: the stream failed (after the samples it gave).
    """
    key, members, data, j = None, {}, {}, 0
    for info, read in shard.members():
        if not info.isfile() or posixpath.basename(info.name).startswith("."):
            continue
        k, ext = _split_name(info.name)
        if k != key:
            if key is not None:
                yield key, members, data
                j += 1
            key, members, data = k, {}, {}
        if ext not in members:
            members[ext] = Member(info.offset_data, info.size)
            if info.size <= max_bytes and want(j):
                data[ext] = read()
    if key is not None:
        yield key, members, data


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
        failed: for a streamed shard that failed while it was counted, why (one line); its
            ``samples`` then count one slot more than it gave, the failure's.
    """

    name: str
    bytes: int
    samples: int
    no_image: int = 0
    no_caption: int = 0
    incomplete: int = 0
    examples: dict[str, str] = field(default_factory=dict)
    failed: str = ""

    def note(self, key: str, members: dict[str, Member]) -> None:
        """Count one sample from its members."""
        self.samples += 1
        no_image = image_ext(members) is None
        no_caption = "txt" not in members and "json" not in members
        if no_image:
            self.no_image += 1
            self.examples.setdefault("no_image", key)
        if no_caption:
            self.no_caption += 1
            self.examples.setdefault("no_caption", key)
        self.incomplete += no_image or no_caption


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
                info.note(key, members)
                end = max(end, *(m.offset + m.size for m in members.values()))
            problem = _tar_problem(path, tar, end, info.bytes)
    except (tarfile.TarError, EOFError) as e:
        raise DataError(f"shard {shown} is not a readable uncompressed tar ({' '.join(str(e).split())})") from None
    except OSError as e:
        raise DataError(f"cannot read shard {shown}: {e.strerror or e}") from None
    if problem:
        raise DataError(f"shard {shown} is damaged: {problem}; write it again or leave it out")
    return info


def scan_stream(shard: StreamedShard) -> ShardInfo:
    """Count a streamed shard's samples by streaming it once (member headers only are looked at).

    A stream that fails is not an error: the :class:`ShardInfo` keeps the samples read before
    the failure, one more slot for the failure itself, and ``failed`` says why.
    """
    info = ShardInfo(name=shard.name, bytes=0, samples=0)
    try:
        for key, members in tar_groups(member for member, _ in shard.members()):
            info.note(key, members)
    except StreamFailed as e:
        info.failed = str(e)
        info.samples += 1
    return info


def _read_index(folder: Path) -> dict[str, dict]:
    """The entries of ``folder/shards.json`` by shard name; empty when there is no usable index."""
    try:
        return _index_entries(json.loads((folder / INDEX_FILE).read_text()))
    except (OSError, ValueError):
        return {}


def _read_url_index(folder_url: str) -> dict[str, dict]:
    """The entries of ``shards.json`` at ``folder_url``; empty when it cannot be had or used."""
    try:
        with urllib.request.urlopen(f"{folder_url}/{INDEX_FILE}", timeout=URL_TIMEOUT) as response:
            return _index_entries(json.loads(response.read(2**24)))
    except (OSError, ValueError, http.client.HTTPException):  # no index there (404, no connection, not
        # JSON): the shards are counted instead
        return {}


def _index_entries(index: object) -> dict[str, dict]:
    try:
        if isinstance(index, dict) and index.get("format") == INDEX_FORMAT:
            return {entry["name"]: entry for entry in index["shards"]}
    except (KeyError, TypeError):
        pass
    return {}


def _from_entry(entry: dict) -> ShardInfo:
    fields = {f.name for f in dataclasses.fields(ShardInfo)}
    return ShardInfo(**{k: v for k, v in entry.items() if k in fields and k != "failed"})


def _cached(indexes: dict[str, dict[str, dict]], folder: str, read: Callable[[], dict[str, dict]]) -> dict[str, dict]:
    """The index entries of ``folder``, read once."""
    if folder not in indexes:
        indexes[folder] = read()
    return indexes[folder]


def _streamed_info(shard: StreamedShard, indexes: dict[str, dict[str, dict]]) -> ShardInfo:
    """A streamed shard's :class:`ShardInfo`: from an index that lists it, else by streaming it."""
    if shard.kind == "gzip":
        path = Path(shard.target)
        entry = _cached(indexes, str(path.parent), lambda: _read_index(path.parent)).get(path.name)
        try:
            size = os.stat(path).st_size
        except OSError as e:
            raise DataError(f"cannot read shard {printable(path)}: {e.strerror or e}") from None
        if entry is not None and entry.get("bytes") == size:
            return _from_entry(entry)
    elif shard.kind == "url":
        folder = shard.target.rsplit("/", 1)[0]
        entry = _cached(indexes, folder, lambda: _read_url_index(folder)).get(shard.name)
        if entry is not None and isinstance(entry.get("samples"), int):
            return _from_entry(entry)
    return scan_stream(shard)


def shard_infos(paths: Sequence[Shard]) -> list[ShardInfo]:
    """Each shard's :class:`ShardInfo`: from the index beside it when it matches the file, else
    scanned (or, for a streamed shard, streamed once)."""
    indexes: dict[str, dict[str, dict]] = {}
    infos = []
    for path in paths:
        if isinstance(path, StreamedShard):
            infos.append(_streamed_info(path, indexes))
            continue
        entry = _cached(indexes, str(path.parent), lambda folder=path.parent: _read_index(folder)).get(path.name)
        try:
            size = path.stat().st_size
        except OSError as e:
            raise DataError(f"cannot read shard {printable(path)}: {e.strerror or e}") from None
        if entry is not None and entry.get("bytes") == size:
            infos.append(_from_entry(entry))
        else:
            infos.append(scan_shard(path))
    return infos


def epoch_samples(spec: str | Path, *, samples_per_epoch: int = 0, split: str = "train") -> int:
    """Samples in one epoch of a shard spec: ``samples_per_epoch`` when given, else all of them."""
    if samples_per_epoch:
        return int(samples_per_epoch)
    return sum(info.samples for info in shard_infos(shard_paths(spec, split=split)))
