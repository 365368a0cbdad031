"""Images from files to normalised batches (and back to pixels), and evaluation sets streamed in
batches with their unreadable images skipped and counted."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from detailclip_cli.core.data import DataError, load_image, make_eval_transform
from detailclip_cli.errors import WorkFailedError


@dataclass
class ImageBatch:
    """Images that loaded, and the ones that did not.

    Attributes:
        paths: the loaded images' paths, in input order.
        images: (B, 3, S, S) normalised tensors (S = the model's image size); None when none loaded.
        errors: ``(path, message)`` for each input that could not be read.
    """

    paths: list[Path]
    images: torch.Tensor | None
    errors: list[tuple[Path, str]]


def iter_image_batches(paths: Sequence[Path], *, image_size: int, mean: Sequence[float],
                       std: Sequence[float], batch_size: int = 32) -> Iterator[ImageBatch]:
    """Load, resize (shorter side, then centre crop) and normalise images, ``batch_size`` at a time.

    Unreadable files are reported in ``errors``, never raised, so one bad file does not stop
    the rest.
    """
    transform = make_eval_transform(image_size=image_size, mean=mean, std=std)
    for start in range(0, len(paths), batch_size):
        ok, tensors, errors = [], [], []
        for path in paths[start:start + batch_size]:
            try:
                tensors.append(transform(load_image(path)))
            except DataError as exc:
                errors.append((Path(path), str(exc)))
                continue
            ok.append(Path(path))
        yield ImageBatch(ok, torch.stack(tensors) if tensors else None, errors)


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


def eval_batches(dataset, *, batch_size: int, workers: int = 0, skipped: SkipLog, strict: bool = False,
                 collate: Callable[[list[dict]], dict] | None = None,
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
            always holds ``index`` and ``bad``.
        on_batch: called with the number of items of each batch, readable or not (progress).

    Raises:
        WorkFailedError: ``strict`` and an item could not be read (the message names it).
    """
    from torch.utils.data import DataLoader, default_collate

    def gather(items: list[dict]) -> dict:
        good = [item for item in items if "bad" not in item]
        batch = (collate or default_collate)(good) if good else {}
        batch["bad"] = [item["bad"] for item in items if "bad" in item]
        batch["size"] = len(items)
        return batch

    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers, collate_fn=gather,
                        persistent_workers=False)
    for batch in loader:
        for message in batch.pop("bad"):
            if strict:
                raise WorkFailedError(f"{message} (without --strict, unreadable images are skipped and counted)")
            skipped.add(message)
        if on_batch is not None:
            on_batch(batch.pop("size"))
        else:
            batch.pop("size")
        if "index" in batch:
            yield batch
