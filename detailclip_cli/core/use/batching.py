"""Images from files to normalised batches (and back to pixels)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch


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
    from detailclip_cli.core.data import DataError, load_image, make_eval_transform

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


def to_pixels(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Undo the input normalisation: (B, 3, H, W) normalised -> (B, 3, H, W) pixels in [0, 1]."""
    m = torch.tensor(mean, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    return (images * s + m).clamp(0.0, 1.0)
