"""Tar shards as an endless, deterministic stream of training batches.

**An epoch** is one pass over the samples in a fresh order, or ``samples_per_epoch`` samples of
an endless sequence of such passes. Its order: the shards in an order drawn from
``(seed, epoch)``, concatenated; the C = world_size x workers readers each take an equal
contiguous range of that sequence (shards are split between readers, and shared by several
when there are fewer shards than readers), pass it through a shuffle buffer seeded by
``(seed, epoch, reader)``, and cut it into batches. Every sample is read at most once per
epoch, and exactly once when the sample count divides into the readers' whole batches;
the remainder of an epoch is left out of it (another part of the data each epoch).

**Bad samples** (an image that does not decode or breaks the pixel limit, a missing or empty
caption, bad JSON, a sample without an image, data lost to damage found while streaming, a
streamed shard, see :mod:`.location`, whose command, connection or gzip data fails part-way)
are never fatal: each becomes ``{"bad": message}`` in its batch, skipped and counted by the
training loop like an unreadable image file, under its ``max_bad_fraction`` stop.

**Resume.** The batches of step ``s`` depend only on the seed, the data, ``s``, the batch size,
the world size and the number of workers: a resumed run with the same ones continues exactly
where the interrupted one was (the readers skip to the epoch and offset by reading tar headers
only). With other worker or process counts, it continues at the same epoch and offset of a
differently split stream (samples of that epoch may be seen twice or not at all).

**Streamed shards** (``pipe:``, ``http(s)://``, ``.tar.gz``) take the same places in the same
order; each reader streams a shard from its start, reads the data of the samples in its range
as they go by (they then wait in the shuffle buffer with their bytes), and stops the stream
after its last one. A skip on resume streams past the skipped samples.
"""

from __future__ import annotations

import bisect
import itertools
import json
import os
import random
import tarfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import NamedTuple

import numpy as np
from torch.utils.data import IterableDataset

from detailclip_cli.core.data.captions import clean_caption
from detailclip_cli.core.data.dataset import TwoViewDataset, collate_skipping_bad
from detailclip_cli.core.data.decode import decode_image
from detailclip_cli.core.data.samples import DataError, ReadReport, printable
from detailclip_cli.core.data.shards.index import (
    USUAL_IMAGE_EXTS,
    Member,
    image_ext,
    shard_infos,
    stream_groups,
    tar_groups,
)
from detailclip_cli.core.data.shards.location import StreamedShard, StreamFailed
from detailclip_cli.core.data.shards.spec import shard_paths

SHUFFLE_BUFFER = 2000  # samples held by each reader's shuffle buffer (references, not bytes)
MAX_MEMBER_BYTES = 256 * 2**20  # a larger member is a bad sample, never read into memory
CAPTION_FIELDS = ("caption", "text")
# Seeds of the streams: shard order, and each reader's shuffle buffer.
_ORDER_STREAM, _SHUFFLE_STREAM = 0x5A4D, 0x5B0F


class ShardSource:
    """Tar shards opened for training: found and counted, nothing decoded yet.

    The streaming source of :func:`~detailclip_cli.core.data.sources.open_source` (it implements
    :class:`~detailclip_cli.core.data.sources.StreamSource`): its length is an epoch's, and
    :meth:`stream` gives the :class:`ShardDataset` the training loop takes, once the views
    (which need the model's tokenizer) exist.

    Args:
        spec: a shard spec (see :func:`~detailclip_cli.core.data.shards.spec.is_shard_spec`).
        split: the sub-folder of a shard folder to read when it has one.
        samples_per_epoch: the length of an epoch in samples (0: one pass over all of them).

    Attributes:
        paths: the shard files, in spec order.
        infos: what each one holds (its :class:`~detailclip_cli.core.data.shards.index.ShardInfo`).
        total: the samples (slots) of all shards.

    Raises:
        DataError: a shard is missing or unreadable, or there are no samples.
    """

    chiral = False  # nothing is known of the images' content

    def __init__(self, spec: str | Path, *, split: str = "train", samples_per_epoch: int = 0):
        self.spec = str(spec)
        self.paths = shard_paths(spec, split=split)
        self.infos = shard_infos(self.paths)
        self.total = sum(info.samples for info in self.infos)
        failed = [info.failed for info in self.infos if info.failed]
        if failed and self.total == len(failed):  # nothing but failures: a wrong command or address
            raise DataError(failed[0] + (f" (and {len(failed) - 1} more shards failed)" if len(failed) > 1 else ""))
        if self.total == 0:
            raise DataError(f"the shards of {printable(spec)} hold no samples")
        self.samples_per_epoch = int(samples_per_epoch) or self.total

    def __len__(self) -> int:
        """Samples in one epoch."""
        return self.samples_per_epoch

    def stream(self, views: TwoViewDataset, *, seed: int, shuffle_buffer: int = SHUFFLE_BUFFER) -> ShardDataset:
        """The stream of training batches of these shards (see :class:`ShardDataset`)."""
        return ShardDataset(self, views=views, seed=seed, shuffle_buffer=shuffle_buffer)


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
        data: a streamed shard's member data, read as it went by (None for a tar file, read
            in place by offset).
    """

    shard: int
    key: str
    members: dict[str, Member]
    sample_id: int
    repeat: int
    problem: str | None = None
    data: dict[str, bytes] | None = None


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

    It implements :class:`~detailclip_cli.core.data.sources.StreamingDataset`: the training loop
    takes it in place of a :class:`TwoViewDataset`, ``iterate_batches`` handing over to
    :meth:`batches` and ``fit`` reading :meth:`data_report`.

    Args:
        spec: a shard spec (see :func:`~detailclip_cli.core.data.shards.spec.is_shard_spec`), or a
            :class:`ShardSource` already opened (its shards are not counted again).
        views: makes each item from a decoded image (:meth:`TwoViewDataset.make_item`: augmented
            views, tokenised caption, local crops for a ``MultiCropDataset``); a caption is
            required when it has a tokenizer.
        seed: seeds the shard order and the shuffle buffers.
        samples_per_epoch: for a spec, the length of an epoch in samples (0: one pass over all
            of them); a source has its own.
        shuffle_buffer: samples each reader's shuffle buffer holds.
        split: for a spec, the sub-folder of a shard folder to read when it has one.

    Raises:
        DataError: a shard is missing or unreadable, or there are no samples.
    """

    def __init__(self, spec: str | Path | ShardSource, *, views: TwoViewDataset, seed: int,
                 samples_per_epoch: int = 0, shuffle_buffer: int = SHUFFLE_BUFFER, split: str = "train"):
        source = spec if isinstance(spec, ShardSource) else ShardSource(
            spec, split=split, samples_per_epoch=samples_per_epoch)
        self.spec, self.paths, self.infos, self.total = source.spec, source.paths, source.infos, source.total
        self.counts = [info.samples for info in self.infos]
        self.first_id = list(itertools.accumulate(self.counts, initial=0))  # sample id of each shard's first
        self.views = views
        self.need_caption = getattr(views, "tokenize", None) is not None
        self.seed = int(seed)
        self.samples_per_epoch = source.samples_per_epoch
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
            if info.failed:
                report.failed_shards += 1
                report.examples.setdefault("failed_shards", info.failed)
                bad += 1  # the failure's slot
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
            if isinstance(path, StreamedShard):
                groups = stream_groups(path, lambda k: first <= k < stop, max_bytes=MAX_MEMBER_BYTES)
                try:
                    for key, members, data in groups:
                        if j >= stop:
                            return
                        if j >= first:
                            yield RawSample(shard, key, members, self.first_id[shard] + j, repeat, data=data)
                        j += 1
                finally:
                    groups.close()  # stops the stream (a command is killed) when the range ends early
            else:
                with tarfile.open(path, "r:") as tar:
                    for key, members in tar_groups(tar):
                        if j >= stop:
                            return
                        if j >= first:
                            yield RawSample(shard, key, members, self.first_id[shard] + j, repeat)
                        j += 1
        except StreamFailed as e:
            problem = f"{e}; sample {j} and later of it are lost"
        except (tarfile.TarError, EOFError, OSError) as e:
            problem = f"shard {printable(path)} could not be read past sample {j} ({' '.join(str(e).split())})"
        for k in range(max(j, first), stop):
            yield RawSample(shard, "", {}, self.first_id[shard] + k, repeat, problem)

    # -- items and batches ---------------------------------------------------------------------------

    def item(self, raw: RawSample, read: Callable[[int, Member], bytes], epoch: int) -> dict:
        """The training item of a raw sample, or ``{"bad": message}`` when it cannot be used."""
        if raw.data is not None:  # streamed: its members were read as they went by
            data = raw.data

            def read(shard: int, member: Member) -> bytes:
                return data[next(ext for ext, m in raw.members.items() if m is member)]

        where = f"{printable(self.paths[raw.shard])}:{printable(raw.key)}"
        if raw.problem:
            return {"bad": raw.problem}
        ext = image_ext(raw.members)
        if ext is None:
            return {"bad": f"sample {where} has no image ({', '.join('.' + e for e in USUAL_IMAGE_EXTS)} ...)"}
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


