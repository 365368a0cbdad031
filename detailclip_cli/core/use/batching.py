"""Images from files to normalised batches (and back to pixels)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from detailclip_cli.core.data import DataError, load_image, make_eval_transform


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
