"""Images from files to normalised batches (and back to pixels), and evaluation sets streamed in
batches with their unreadable images skipped and counted."""

from __future__ import annotations

import os
import tarfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch

from detailclip_cli.core.data import DataError, decode_image, is_image_file, load_image, make_eval_transform
from detailclip_cli.errors import WorkFailedError

MAX_DEFAULT_WORKERS = 8  # beyond this, decoding small images no longer keeps up with the fork cost


def default_workers(num_items: int | None = None, *, device: torch.device | str | None = None) -> int:
    """``--workers``' default for commands that read and encode images (``zero-shot``, ``embed``):
    one per core (at most :data:`MAX_DEFAULT_WORKERS`), none for a handful of images, where
    starting workers costs more than it saves.

    With the model on the CPU the workers also run it (see :func:`iter_image_batches`), one
    thread each, so every core is a worker's. With the model on an accelerator (or ``device``
    not given) the workers only decode, and the main process keeps a core to feed the device.

    Args:
        num_items: how many images will be read (None: many).
        device: where the model runs.
    """
    if num_items is not None and num_items < 64:
        return 0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    on_cpu = device is not None and torch.device(device).type == "cpu"
    return max(0, min(MAX_DEFAULT_WORKERS, cores if on_cpu else cores - 1))


@dataclass(frozen=True)
class TarMember:
    """An image inside an uncompressed tar file (a webdataset shard), read by offset.

    Attributes:
        tar: the tar file. name: the member's name. offset, size: where its bytes lie.
    """

    tar: Path
    name: str
    offset: int
    size: int

    def __str__(self) -> str:  # the image's id: ``shard.tar/key.jpg``
        return f"{self.tar}/{self.name}"

    def read(self) -> bytes:
        with open(self.tar, "rb") as f:
            f.seek(self.offset)
            return f.read(self.size)


ImageSource = Path | TarMember


def image_sources(paths: Sequence[Path]) -> list[ImageSource]:
    """Paths with each ``.tar`` file replaced by its image members, in the order stored.

    Raises:
        DataError: a ``.tar`` file that cannot be read as a tar archive (the message names it).
    """
    out: list[ImageSource] = []
    for path in paths:
        if Path(path).suffix.lower() != ".tar":
            out.append(Path(path))
            continue
        try:
            with tarfile.open(path, "r:") as tar:
                out += [TarMember(Path(path), m.name, m.offset_data, m.size)
                        for m in tar.getmembers() if m.isfile() and is_image_file(Path(m.name))]
        except (OSError, tarfile.TarError) as exc:
            raise DataError(f"{path}: not a readable tar file ({exc})") from None
    return out


def load_source(source: ImageSource):
    """A PIL image from a file or a tar member (:class:`DataError` naming it when unreadable)."""
    if isinstance(source, TarMember):
        try:
            data = source.read()
        except OSError as exc:
            raise DataError(f"{source}: {exc.strerror or exc}") from None
        return decode_image(data, str(source))
    return load_image(source)


class ImageSourceDataset(torch.utils.data.Dataset):
    """Images by index for a ``DataLoader``: ``{"image": transform(image), "index": i}``, or
    ``{"bad": message, "index": i}`` for one that cannot be read (never raised, so a worker
    survives a bad file and the batch keeps its order)."""

    def __init__(self, sources: Sequence[ImageSource], transform: Callable):
        self.sources, self.transform = list(sources), transform

    def __len__(self) -> int:
        return len(self.sources)

    def __getitem__(self, i: int) -> dict:
        try:
            return {"image": self.transform(load_source(self.sources[i])), "index": i}
        except DataError as exc:
            return {"bad": " ".join(str(exc).split()), "index": i}


@dataclass
class ImageBatch:
    """Images that loaded, and the ones that did not.

    Attributes:
        paths: the loaded images' paths (or tar members), in input order.
        images: (B, 3, S, S) normalised tensors (S = the model's image size); None when none
            loaded, or when the batch was encoded (``outputs``).
        errors: ``(path, message)`` for each input that could not be read.
        indices: the loaded images' positions in the input list.
        outputs: what ``encode`` made of ``images``, when :func:`iter_image_batches` was given one.
    """

    paths: list[ImageSource]
    images: torch.Tensor | None
    errors: list[tuple[ImageSource, str]]
    indices: list[int] = field(default_factory=list)
    outputs: torch.Tensor | None = None


class BatchEncoder(Protocol):
    """What :func:`iter_image_batches` may run on each normalised batch: a callable that can be
    pickled (``DataLoader`` workers started with ``spawn`` receive it) and says where it runs."""

    device: torch.device

    def __call__(self, images: torch.Tensor) -> torch.Tensor: ...


def encodes_in_workers(encode: BatchEncoder | None, workers: int) -> bool:
    """Whether the ``DataLoader`` workers run ``encode`` (a CPU model, and workers to run it)
    rather than the main process, on the batches they made."""
    return encode is not None and workers > 0 and torch.device(encode.device).type == "cpu"


def iter_image_batches(paths: Sequence[ImageSource], *, image_size: int, mean: Sequence[float],
                       std: Sequence[float], batch_size: int = 32, workers: int = 0,
                       batches: Sequence[Sequence[int]] | None = None,
                       encode: BatchEncoder | None = None) -> Iterator[ImageBatch]:
    """Load, resize (shorter side, then centre crop) and normalise images, ``batch_size`` at a time,
    and encode them when asked.

    Images are decoded by ``workers`` ``DataLoader`` processes (0: in this process) and come
    back in input order. Unreadable files are reported in ``errors``, never raised, so one bad
    file does not stop the rest.

    With ``encode`` on the CPU and workers, each worker also encodes its batches, on one thread
    (``DataLoader`` gives each worker one), and only the outputs come back: on a CPU, N
    single-threaded processes that each read and encode outrun one process whose N threads
    encode while nothing reads (1.17x on 2 cores, docs/speed.md). Otherwise ``encode`` runs
    here, on the batches the workers made.

    Args:
        paths: image files or tar members.
        batches: the input indices of each batch, when the caller fixes them (chunked embedding
            keeps a batch inside its chunk); default consecutive runs of ``batch_size``.
        encode: applied to each batch of normalised images; its result is the batch's ``outputs``.
    """
    from torch.utils.data import DataLoader

    transform = make_eval_transform(image_size=image_size, mean=mean, std=std)
    in_workers = encodes_in_workers(encode, workers)
    # Items carry uint8 pixels and each batch is normalised at once: bitwise the same tensors as
    # normalising image by image, at about a tenth of that step's cost.
    dataset = ImageSourceDataset(paths, transform.pixels)
    if batches is None:
        batches = [range(i, min(i + batch_size, len(paths))) for i in range(0, len(paths), batch_size)]
    loader = DataLoader(dataset, batch_sampler=[list(b) for b in batches], num_workers=workers,
                        collate_fn=ImageCollate(transform.normalize, encode if in_workers else None))
    for ok, tensor, errors in loader:
        if encode is not None and tensor is not None and not in_workers:
            tensor = encode(tensor)
        yield ImageBatch([paths[i] for i in ok], tensor if encode is None else None,
                         [(paths[i], message) for i, message in errors], ok,
                         outputs=None if encode is None else tensor)


class ImageCollate:
    """Collate ``ImageSourceDataset`` items: (indices of readable images, their ``(b, 3, S, S)``
    normalised batch, or ``encode`` of it, or None, (index, message) of unreadable ones). A
    class, so ``DataLoader`` workers started with ``spawn`` can pickle it."""

    def __init__(self, normalize: Callable[[torch.Tensor], torch.Tensor], encode: BatchEncoder | None = None):
        self.normalize, self.encode = normalize, encode

    def __call__(self, items: list[dict]) -> tuple[list[int], torch.Tensor | None, list[tuple[int, str]]]:
        good = [item for item in items if "bad" not in item]
        tensor = self.normalize(torch.stack([item["image"] for item in good])) if good else None  # (b, 3, S, S)
        if tensor is not None and self.encode is not None:
            tensor = self.encode(tensor)
        bad = [(item["index"], item["bad"]) for item in items if "bad" in item]
        return [item["index"] for item in good], tensor, bad


def load_images(paths: Sequence[str | Path], model) -> torch.Tensor:
    """Image files as one batch for ``model``: resized (shorter side, then centre crop) and normalised.

    Args:
        paths: B image files.
        model: a :class:`DetailCLIP`; its image size and normalisation are used, and the batch
            goes to its device.

    Returns:
        (B, 3, S, S) normalised images (S = the model's image size).

    Raises:
        DataError: no paths, or a file that cannot be read as an image (the message names it).
    """
    if not paths:
        raise DataError("no images given")
    v = model.cfg.vision
    transform = make_eval_transform(image_size=v.image_size, mean=v.mean, std=v.std)
    images = torch.stack([transform(load_image(Path(path))) for path in paths])  # (B, 3, S, S)
    return images.to(model.logit_scale.device)


def to_pixels(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Undo the input normalisation: (B, 3, H, W) normalised -> (B, 3, H, W) pixels in [0, 1]."""
    m = torch.tensor(mean, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    return (images * s + m).clamp(0.0, 1.0)


@dataclass
class SkipLog:
    """Images an evaluation could not read: counted, the first few named.

    An image read twice (the validation split by two tasks, a training image drawn again) is
    counted once: the messages name the file.

    Attributes:
        count: images skipped.
        examples: the first :attr:`keep` messages (one line each, naming the file).
    """

    count: int = 0
    examples: list[str] = field(default_factory=list)
    keep: int = 5
    seen: set[str] = field(default_factory=set, repr=False)

    def add(self, message: str) -> None:
        if message in self.seen:
            return
        self.seen.add(message)
        self.count += 1
        if len(self.examples) < self.keep:
            self.examples.append(message)


class EvalCollate:
    """How :func:`eval_batches` makes a batch of dict items (in its workers): the readable items
    collated (``collate``, default stacked tensors), their ``image`` replaced by ``encode`` of it
    as ``embedding`` when ``encode`` is given, the messages of the unreadable ones as ``bad`` and
    the item count as ``size``. A class, so ``DataLoader`` workers started with ``spawn`` can
    pickle it."""

    def __init__(self, collate: Callable[[list[dict]], dict] | None = None, encode: BatchEncoder | None = None):
        self.collate, self.encode = collate, encode

    def __call__(self, items: list[dict]) -> dict:
        from torch.utils.data import default_collate

        good = [item for item in items if "bad" not in item]
        batch = (self.collate or default_collate)(good) if good else {}
        if good and self.encode is not None:
            batch["embedding"] = self.encode(batch.pop("image"))
        batch["bad"] = [item["bad"] for item in items if "bad" in item]
        batch["size"] = len(items)
        return batch


def eval_batches(dataset, *, batch_size: int, workers: int = 0, skipped: SkipLog, strict: bool = False,
                 collate: Callable[[list[dict]], dict] | None = None, encode: BatchEncoder | None = None,
                 on_batch: Callable[[int], None] | None = None) -> Iterator[dict]:
    """Stream a dataset's readable items in order, ``batch_size`` at a time, with ``workers`` processes.

    Memory is bounded by ``batch_size`` (times the workers' prefetch), never by the data set.
    An item the dataset gives as ``{"bad": message}`` is left out and logged in ``skipped``.

    Args:
        dataset: a map-style dataset whose items are dicts (``EvalSetDataset``).
        batch_size: items per batch.
        workers: ``DataLoader`` worker processes (0: read in this process).
        skipped: where unreadable items are counted.
        strict: raise on the first unreadable item instead.
        collate: how readable items become a batch (default: stacked tensors); the batch
            always holds ``index``.
        encode: replaces each batch's ``image`` by ``embedding``, ``encode`` of it: in the
            workers with a CPU model (:func:`encodes_in_workers`, as :func:`iter_image_batches`
            does), else here.
        on_batch: called with the number of items of each batch, readable or not (progress).

    Raises:
        WorkFailedError: ``strict`` and an item could not be read (the message names it).
    """
    from torch.utils.data import DataLoader

    in_workers = encodes_in_workers(encode, workers)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers,
                        collate_fn=EvalCollate(collate, encode if in_workers else None), persistent_workers=False)
    for batch in loader:
        for message in batch.pop("bad"):
            if strict:
                raise WorkFailedError(f"{message} (without --strict, unreadable images are skipped and counted)")
            skipped.add(message)
        size = batch.pop("size")
        if on_batch is not None:
            on_batch(size)
        if "index" in batch:
            if encode is not None and not in_workers:
                batch["embedding"] = encode(batch.pop("image"))
            yield batch
