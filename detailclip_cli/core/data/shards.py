"""Training data as webdataset-format tar shards: reading them as a stream, and writing them.

A shard is an uncompressed ``.tar`` file whose members are grouped into samples by basename,
as webdataset does: ``abc.jpg`` + ``abc.txt`` (+ ``abc.json``) are one sample with key ``abc``
(the key is the member's path up to the first dot of its file name; a sample's members follow
each other in the tar). A sample has one image (``.jpg``, ``.jpeg``, ``.png``, ``.webp``, or
another extension of :data:`IMAGE_EXTENSIONS`) and, for pretraining, a caption: ``.txt``, or
else ``.json`` with a ``"caption"`` or ``"text"`` string. Hidden members and folders are
ignored.

A shard spec (``--data``) is a brace pattern (``shards/{000000..000099}.tar``, ``{a,b}.tar``),
one ``.tar`` file, or a folder whose top level holds ``.tar`` files and nothing else but
``shards.json`` (its ``train/`` sub-folder when it has one, as for image folders).

**Counting.** The stream needs each shard's sample count: it is taken from ``shards.json``
beside the shards (written by :func:`write_shards`, ``detailclip shard``) when its byte size
for that shard still matches, else counted by reading the tar headers (no image data) when
the dataset is built. A missing shard, or one that is not a readable tar (not a tar, truncated,
garbage after its last member), is a one-line :class:`DataError` at that point, naming it.

**An epoch** is one pass over the samples in a fresh order, or ``samples_per_epoch`` samples of
an endless sequence of such passes. Its order: the shards in an order drawn from
``(seed, epoch)``, concatenated; the C = world_size x workers readers each take an equal
contiguous range of that sequence (shards are split between readers, and shared by several
when there are fewer shards than readers), pass it through a shuffle buffer seeded by
``(seed, epoch, reader)``, and cut it into batches. Every sample is read at most once per
epoch, and exactly once when the sample count divides into the readers' whole batches;
the remainder of an epoch is left out of it (another part of the data each epoch).

**Bad samples** (an image that does not decode or breaks the pixel limit, a missing or empty
caption, bad JSON, a sample without an image, data lost to damage found while streaming) are
never fatal: each becomes ``{"bad": message}`` in its batch, skipped and counted by the
training loop like an unreadable image file, under its ``max_bad_fraction`` stop.

**Resume.** The batches of step ``s`` depend only on the seed, the data, ``s``, the batch size,
the world size and the number of workers: a resumed run with the same ones continues exactly
where the interrupted one was (the readers skip to the epoch and offset by reading tar headers
only). With other worker or process counts, it continues at the same epoch and offset of a
differently split stream (samples of that epoch may be seen twice or not at all).
"""

from __future__ import annotations

import bisect
import dataclasses
import itertools
import json
import os
import posixpath
import random
import re
import tarfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from glob import glob
from pathlib import Path
from typing import NamedTuple

import numpy as np
from torch.utils.data import IterableDataset

from detailclip_cli.core.data.dataset import TwoViewDataset, collate_skipping_bad
from detailclip_cli.core.data.readers import (
    IMAGE_EXTENSIONS,
    DataError,
    ReadReport,
    Sample,
    clean_caption,
    decode_image,
    load_image,
    printable,
)

INDEX_FILE = "shards.json"
INDEX_FORMAT = "detailclip-shards"
SHUFFLE_BUFFER = 2000  # samples held by each reader's shuffle buffer (references, not bytes)
MAX_MEMBER_BYTES = 256 * 2**20  # a larger member is a bad sample, never read into memory
# Image extensions in order of preference, when a sample has several: webdataset's usual four,
# then whatever else the folder reader takes.
_USUAL_IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
IMAGE_EXTS = _USUAL_IMAGE_EXTS + tuple(sorted({e.lstrip(".") for e in IMAGE_EXTENSIONS} - set(_USUAL_IMAGE_EXTS)))
CAPTION_FIELDS = ("caption", "text")
# Seeds of the streams: shard order, and each reader's shuffle buffer.
_ORDER_STREAM, _SHUFFLE_STREAM = 0x5A4D, 0x5B0F


# -- shard specs ---------------------------------------------------------------------------------


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


def _shard_folder(path: Path, split: str) -> Path | None:
    """The folder of shards ``path`` names (its ``split`` sub-folder first), or None."""
    for folder in ([path / split] if split else []) + [path]:
        try:
            entries = [e for e in folder.iterdir() if not e.name.startswith(".")]
        except OSError:
            continue
        if any(e.suffix.lower() == ".tar" for e in entries) and all(
                (e.suffix.lower() == ".tar" or e.name == INDEX_FILE) and not e.is_dir() for e in entries):
            return folder
    return None


def is_shard_spec(data: str | Path, *, split: str = "train") -> bool:
    """Whether a data spec names tar shards (a pattern or file ending in ``.tar``, or a folder of them)."""
    text = str(data)
    if text == "demo":
        return False
    if text.lower().endswith(".tar"):
        return True
    path = Path(text).expanduser()
    return path.is_dir() and _shard_folder(path, split) is not None


def streams_shards(data: str | Path, *, samples_per_epoch: int = 0) -> bool:
    """:func:`is_shard_spec` for a training run, which refuses ``samples_per_epoch`` for other data.

    Raises:
        DataError: ``samples_per_epoch`` was given for data that is not tar shards.
    """
    shards = is_shard_spec(data)
    if samples_per_epoch and not shards:
        raise DataError("--samples-per-epoch is for tar shards; other data is read whole each epoch")
    return shards


def shard_paths(spec: str | Path, *, split: str = "train") -> list[Path]:
    """The shard files a spec names, in order (sorted for a folder, pattern order otherwise).

    Raises:
        DataError: a named shard does not exist, or the spec names none.
    """
    text = str(spec)
    path = Path(text).expanduser()
    if not text.lower().endswith(".tar") and path.is_dir():
        folder = _shard_folder(path, split)
        if folder is None:
            raise DataError(f"no .tar shards in {printable(path)}")
        return sorted(e for e in folder.iterdir() if e.suffix.lower() == ".tar" and not e.name.startswith("."))
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
    return paths


# -- reading tar headers -------------------------------------------------------------------------


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


# -- the stream ----------------------------------------------------------------------------------


class RawSample(NamedTuple):
    """One slot of an epoch's sequence, before anything but its tar header is read.

    Attributes:
        shard: index of its shard in the dataset's list.
        key: its key in the shard ("" when the shard lost it).
        members: its files by extension.
        sample_id: the sample's number in the whole set (shards in spec order).
        repeat: which pass over the data it belongs to within its epoch (0 unless the epoch
            is longer than the data).
        problem: why it cannot be read, when its shard could not give it.
    """

    shard: int
    key: str
    members: dict[str, Member]
    sample_id: int
    repeat: int
    problem: str | None = None


def _seeded(*numbers: int) -> random.Random:
    return random.Random(int(np.random.SeedSequence(list(numbers)).generate_state(1, dtype=np.uint64)[0]))


def shuffle_buffer(items: Iterable, size: int, rng: random.Random) -> Iterator:
    """webdataset's shuffle: hold ``size`` items, emit a random one as each new one comes in."""
    buffer: list = []
    for item in items:
        if len(buffer) < size:
            buffer.append(item)
            continue
        k = rng.randrange(size)
        yield buffer[k]
        buffer[k] = item
    rng.shuffle(buffer)
    yield from buffer


class ShardDataset:
    """Tar shards as an endless, deterministic stream of training batches (see the module docstring).

    It stands in for a :class:`TwoViewDataset` in the training loop: ``iterate_batches`` hands
    over to :meth:`batches`, and ``fit`` reads :meth:`data_report`.

    Args:
        spec: a shard spec (see :func:`is_shard_spec`).
        views: makes each item from a decoded image (:meth:`TwoViewDataset.make_item`: augmented
            views, tokenised caption, local crops for a ``MultiCropDataset``); a caption is
            required when it has a tokenizer.
        seed: seeds the shard order and the shuffle buffers.
        samples_per_epoch: the length of an epoch in samples (0: one pass over all of them).
        shuffle_buffer: samples each reader's shuffle buffer holds.
        split: the sub-folder of a shard folder to read when it has one.

    Raises:
        DataError: a shard is missing or unreadable, or there are no samples.
    """

    def __init__(self, spec: str | Path, *, views: TwoViewDataset, seed: int, samples_per_epoch: int = 0,
                 shuffle_buffer: int = SHUFFLE_BUFFER, split: str = "train"):
        self.spec = str(spec)
        self.paths = shard_paths(spec, split=split)
        self.infos = shard_infos(self.paths)
        self.counts = [info.samples for info in self.infos]
        self.total = sum(self.counts)
        if self.total == 0:
            raise DataError(f"the shards of {printable(spec)} hold no samples")
        self.first_id = list(itertools.accumulate(self.counts, initial=0))  # sample id of each shard's first
        self.views = views
        self.need_caption = getattr(views, "tokenize", None) is not None
        self.seed = int(seed)
        self.samples_per_epoch = int(samples_per_epoch) or self.total
        self.shuffle_size = max(1, int(shuffle_buffer))

    def __len__(self) -> int:
        """Samples in one epoch."""
        return self.samples_per_epoch

    def data_report(self) -> ReadReport:
        """What the tar headers showed: samples that can be used, those without an image or caption.

        Problems inside the data (undecodable images, empty captions, bad JSON) show up while
        training, as ``bad_samples``.
        """
        report = ReadReport()
        bad = 0
        for info, path in zip(self.infos, self.paths):
            for kind, count, what in (("missing_images", info.no_image, "no_image"),
                                      ("unreadable_captions", info.no_caption if self.need_caption else 0,
                                       "no_caption")):
                if count:
                    setattr(report, kind, getattr(report, kind) + count)
                    report.examples.setdefault(kind, f"{printable(path)}:{printable(info.examples.get(what, '?'))}")
            bad += info.incomplete if self.need_caption else info.no_image
        report.samples = self.total - bad
        return report

    # -- the order of an epoch ---------------------------------------------------------------------

    def shard_order(self, epoch: int, repeat: int = 0) -> list[int]:
        """The shards of pass ``repeat`` of ``epoch``, in a seeded order."""
        order = list(range(len(self.paths)))
        _seeded(self.seed, epoch, repeat, _ORDER_STREAM).shuffle(order)
        return order

    def slots(self, epoch: int, start: int, stop: int) -> Iterator[RawSample]:
        """Positions ``[start, stop)`` of the epoch's sequence (its passes' shards concatenated)."""
        x = start
        while x < stop:
            repeat, y = divmod(x, self.total)
            order = self.shard_order(epoch, repeat)
            ends = list(itertools.accumulate(self.counts[s] for s in order))
            k = bisect.bisect_right(ends, y)  # the shard holding position y
            first = y - (ends[k] - self.counts[order[k]])
            n = min(self.counts[order[k]] - first, stop - x)
            yield from self._read_shard(order[k], first, first + n, repeat)
            x += n

    def _read_shard(self, shard: int, first: int, stop: int, repeat: int) -> Iterator[RawSample]:
        """Samples ``[first, stop)`` of one shard; the ones it cannot give come as problems."""
        path = self.paths[shard]
        j = 0
        problem = f"shard {printable(path)} holds fewer samples than counted"
        try:
            with tarfile.open(path, "r:") as tar:
                for key, members in tar_groups(tar):
                    if j >= stop:
                        return
                    if j >= first:
                        yield RawSample(shard, key, members, self.first_id[shard] + j, repeat)
                    j += 1
        except (tarfile.TarError, EOFError, OSError) as e:
            problem = f"shard {printable(path)} could not be read past sample {j} ({' '.join(str(e).split())})"
        for k in range(max(j, first), stop):
            yield RawSample(shard, "", {}, self.first_id[shard] + k, repeat, problem)

    # -- items and batches ---------------------------------------------------------------------------

    def item(self, raw: RawSample, read: Callable[[int, Member], bytes], epoch: int) -> dict:
        """The training item of a raw sample, or ``{"bad": message}`` when it cannot be used."""
        where = f"{printable(self.paths[raw.shard])}:{printable(raw.key)}"
        if raw.problem:
            return {"bad": raw.problem}
        ext = image_ext(raw.members)
        if ext is None:
            return {"bad": f"sample {where} has no image ({', '.join('.' + e for e in _USUAL_IMAGE_EXTS)} ...)"}
        too_big = [e for e, m in raw.members.items() if m.size > MAX_MEMBER_BYTES]
        if too_big:
            return {"bad": f"sample {where}: its .{too_big[0]} is over {MAX_MEMBER_BYTES // 2**20} MiB"}
        caption = ""
        if self.need_caption:
            caption, problem = self.caption(raw, read)
            if problem:
                return {"bad": f"sample {where}: {problem}"}
        try:
            image = decode_image(read(raw.shard, raw.members[ext]), f"{where}.{ext}")
        except (DataError, OSError) as e:
            return {"bad": str(e) if isinstance(e, DataError) else f"cannot read {where}.{ext}: {e}"}
        # Repeats of a sample within one epoch get views of their own.
        self.views.set_epoch(epoch + (raw.repeat << 32))
        return self.views.make_item(image, raw.sample_id, caption)

    @staticmethod
    def caption(raw: RawSample, read: Callable[[int, Member], bytes]) -> tuple[str, str | None]:
        """A sample's cleaned caption from its ``.txt``, else its ``.json``; or ``("", problem)``."""
        if "txt" in raw.members:
            text = clean_caption(read(raw.shard, raw.members["txt"])).text
            return (text, None) if text else ("", "empty caption")
        if "json" not in raw.members:
            return "", "no caption (.txt or .json)"
        try:
            record = json.loads(read(raw.shard, raw.members["json"]))
        except (ValueError, RecursionError) as e:
            return "", f"bad JSON ({' '.join(str(e).split())[:80]})"
        value = next((record[f] for f in CAPTION_FIELDS if isinstance(record, dict) and f in record), None)
        if not isinstance(value, str):
            return "", "its .json has no \"caption\" or \"text\" string"
        text = clean_caption(value).text
        return (text, None) if text else ("", "empty caption")

    def reader_batches(self, epoch: int, reader: int, readers: int, batch_size: int,
                       skip: int, count: int) -> Iterator[dict]:
        """Batches ``skip`` to ``skip + count`` of one reader's part of an epoch.

        Reader r of C takes positions ``[r q, r q + (q // B) B)`` of the epoch's sequence,
        q = samples_per_epoch // C, through its shuffle buffer. Skipped batches read tar
        headers only.
        """
        q = self.samples_per_epoch // readers
        start = reader * q
        raws = shuffle_buffer(self.slots(epoch, start, start + q // batch_size * batch_size), self.shuffle_size,
                              _seeded(self.seed, epoch, reader, readers, _SHUFFLE_STREAM))
        files: dict[int, int] = {}

        def read(shard: int, member: Member) -> bytes:
            if shard not in files:
                files[shard] = os.open(self.paths[shard], os.O_RDONLY)
            data = os.pread(files[shard], member.size, member.offset)
            if len(data) != member.size:
                raise OSError(f"the shard ended {member.size - len(data)} bytes early")
            return data

        try:
            for _ in range(skip * batch_size):
                next(raws)
            for _ in range(count):
                chunk = list(itertools.islice(raws, batch_size))
                yield collate_skipping_bad([self.item(raw, read, epoch) for raw in chunk])
        finally:
            for fd in files.values():
                os.close(fd)

    def steps_per_epoch(self, batch_size: int, world_size: int, workers: int) -> int:
        """Steps (batches of each process) in one epoch: each of the world_size x workers readers
        gives the same number of whole batches.

        Raises:
            DataError: a reader's part of the epoch is smaller than one batch.
        """
        per_worker = max(1, workers)
        readers = world_size * per_worker
        per_reader = self.samples_per_epoch // readers // batch_size
        if per_reader < 1:
            raise DataError(
                f"an epoch of {self.samples_per_epoch} samples split between {readers} readers "
                f"({world_size} processes x {per_worker} workers) gives each fewer than one batch of "
                f"{batch_size}; use fewer --workers, a smaller --batch-size or more data")
        return per_reader * per_worker

    def batches(self, cfg, start_step: int, *, rank: int = 0, world_size: int = 1,
                pin_memory: bool = False) -> Iterator[dict]:
        """Endless batches of this process from ``start_step`` on, as ``iterate_batches`` gives them.

        Each batch (B = ``cfg.batch_size / world_size`` samples, bad ones left out) has
        ``view1``, ``view2`` (B, 3, H, W), ``text`` (B, context) when captions
        are used, ``index`` (B,) sample ids (shards in spec order, counting from 0),
        ``local_views`` for multi-crop, and ``bad``: the messages of the samples left out.
        DataLoader worker w of this process reads for reader ``rank * workers + w``; the loader
        takes their batches in turn, so batch k of an epoch comes from worker k mod workers.

        Args:
            cfg: ``batch_size`` (global, of all processes), ``workers``.
            start_step: the first step to give a batch for (the resume point).
            rank: this process's rank.
            world_size: the number of processes.
            pin_memory: pin the batches (for CUDA).
        """
        from torch.utils.data import DataLoader

        workers, local = max(1, cfg.workers), cfg.batch_size // world_size
        per_epoch = self.steps_per_epoch(local, world_size, cfg.workers)
        epoch, offset = divmod(start_step, per_epoch)
        while True:
            stream = _EpochStream(self, epoch=epoch, offset=offset, per_epoch=per_epoch, rank=rank,
                                  world_size=world_size, workers=workers, batch_size=local)
            yield from DataLoader(stream, batch_size=None, num_workers=cfg.workers, pin_memory=pin_memory)
            epoch, offset = epoch + 1, 0


class _EpochStream(IterableDataset):
    """One process's batches of one epoch from ``offset`` on, each loader worker giving its share.

    The loader asks workers in turn, so its j-th batch (step ``offset + j``) comes from worker
    ``j mod W``; that worker therefore plays reader ``(offset + j) mod W``, at that reader's
    batch ``(offset + j) // W``.
    """

    def __init__(self, dataset: ShardDataset, *, epoch: int, offset: int, per_epoch: int, rank: int,
                 world_size: int, workers: int, batch_size: int):
        super().__init__()
        self.dataset, self.epoch, self.offset, self.per_epoch = dataset, epoch, offset, per_epoch
        self.rank, self.world_size, self.workers, self.batch_size = rank, world_size, workers, batch_size

    def __iter__(self) -> Iterator[dict]:
        from torch.utils.data import get_worker_info

        info = get_worker_info()
        worker = info.id if info is not None else 0
        first = self.offset + worker  # this worker's first step
        steps = range(first, self.per_epoch, self.workers)
        role = first % self.workers
        return self.dataset.reader_batches(self.epoch, self.rank * self.workers + role,
                                           self.world_size * self.workers, self.batch_size,
                                           skip=first // self.workers, count=len(steps))


# -- writing shards ------------------------------------------------------------------------------

# The formats whose bytes are kept as they are (by their magic numbers), and their extensions.
_KEPT_FORMATS = ((b"\xff\xd8\xff", "jpg"), (b"\x89PNG\r\n\x1a\n", "png"))
_SHARD_NAME = re.compile(r"\d{6,}\.tar")


def kept_format(data: bytes) -> str | None:
    """``jpg``, ``png`` or ``webp`` when ``data`` is such a file (its bytes go into shards as they are)."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return next((ext for magic, ext in _KEPT_FORMATS if data.startswith(magic)), None)


@dataclass
class WriteSummary:
    """What :func:`write_shards` wrote.

    Attributes:
        shards: the shard files, in order.
        samples: samples written.
        skipped: one line for each input left out (its image could not be read).
        bytes: the shards' total size.
    """

    shards: list[Path] = field(default_factory=list)
    samples: int = 0
    skipped: list[str] = field(default_factory=list)
    bytes: int = 0


def prepare_out_dir(out_dir: Path, *, force: bool) -> None:
    """Make ``out_dir`` ready for new shards: refuse a non-empty one unless ``force``, which
    removes only the shards and index a previous run wrote (other files stay).

    Raises:
        DataError: ``out_dir`` is not empty and ``force`` is off, or is not a folder.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise DataError(f"--out {printable(out_dir)} is a file, not a folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    # Temporary shards and index of a crashed run (atomic_write's names): never data of anyone else.
    for stale in [*out_dir.glob(".*.tar.*.tmp"), *out_dir.glob(f".{INDEX_FILE}.*.tmp")]:
        stale.unlink(missing_ok=True)
    entries = sorted(e.name for e in out_dir.iterdir())
    if entries and not force:
        raise DataError(f"--out {printable(out_dir)} is not empty ({printable(entries[0])}"
                        f"{f' and {len(entries) - 1} more' if len(entries) > 1 else ''}); "
                        "give --force to replace the shards in it")
    for name in entries:
        if _SHARD_NAME.fullmatch(name) or name == INDEX_FILE:
            (out_dir / name).unlink()


def sample_members(sample: Sample, key: str) -> list[tuple[str, bytes]]:
    """A sample's tar members: its image (original bytes when JPEG, PNG or WebP; else lossless
    PNG of the decoded image), ``.txt`` caption, and ``.json`` label when it has one.

    Raises:
        DataError: the image cannot be read (checked with :func:`load_image`'s safe decoding).
    """
    import io

    image = load_image(sample.image)  # refuses what training would refuse (pixel limit, garbage)
    try:
        data = Path(sample.image).read_bytes()
    except OSError as e:
        raise DataError(f"cannot read image {printable(sample.image)}: {e.strerror or e}") from None
    ext = kept_format(data)
    if ext is None:
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        data, ext = buffer.getvalue(), "png"
    members = [(f"{key}.{ext}", data), (f"{key}.txt", sample.caption.encode("utf-8"))]
    if sample.label is not None:
        members.append((f"{key}.json", json.dumps({"label": sample.label}, ensure_ascii=False).encode("utf-8")))
    return members


def _add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    import io

    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), 0o644, 0  # fixed: the same input writes the same bytes
    tar.addfile(info, io.BytesIO(data))


def write_shards(samples: Sequence[Sample], out_dir: Path, *, samples_per_shard: int = 1000,
                 force: bool = False, progress: Callable[[int, str | None], None] | None = None) -> WriteSummary:
    """Write samples as webdataset tar shards ``000000.tar``, ``000001.tar``, ... plus ``shards.json``.

    Each shard is written under a temporary hidden name and renamed when complete (fsynced), so
    a crash leaves whole shards only; the index (per-shard sizes and sample counts, which spare
    the reader a scan) is written last. Sample keys number the samples from ``000000000``.

    Args:
        samples: what to write, in order.
        out_dir: the folder (created; see :func:`prepare_out_dir`).
        samples_per_shard: samples in each shard but the last.
        force: replace the shards of an earlier run in ``out_dir``.
        progress: called after each sample with how many are done and, for one that was left
            out, the one-line reason.

    Raises:
        DataError: ``out_dir`` is not empty (without ``force``), or ``samples_per_shard`` < 1.
    """
    from detailclip_cli.core.store.io import atomic_write, write_json

    if samples_per_shard < 1:
        raise DataError(f"--samples-per-shard must be at least 1, got {samples_per_shard}")
    out_dir = Path(out_dir)
    prepare_out_dir(out_dir, force=force)
    summary = WriteSummary()
    infos: list[ShardInfo] = []

    def prepared() -> Iterator[list[tuple[str, bytes]]]:
        for done, sample in enumerate(samples, 1):
            try:
                members = sample_members(sample, f"{summary.samples:09d}")
            except DataError as e:
                summary.skipped.append(str(e))
                if progress:
                    progress(done, str(e))
                continue
            summary.samples += 1
            yield members
            if progress:
                progress(done, None)

    pending = prepared()
    for first in pending:  # a shard is started only once it has a sample
        path = out_dir / f"{len(infos):06d}.tar"

        def write(tmp: Path, first=first) -> None:
            with tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as tar:
                for members in itertools.chain([first], itertools.islice(pending, samples_per_shard - 1)):
                    for name, data in members:
                        _add_member(tar, name, data)

        before = summary.samples - 1
        atomic_write(path, write)
        infos.append(ShardInfo(name=path.name, bytes=path.stat().st_size, samples=summary.samples - before))
        summary.shards.append(path)
        summary.bytes += infos[-1].bytes
    if infos:
        write_json(out_dir / INDEX_FILE, {"format": INDEX_FORMAT, "version": 1, "samples": summary.samples,
                                          "shards": [dataclasses.asdict(i) for i in infos]})
    return summary
