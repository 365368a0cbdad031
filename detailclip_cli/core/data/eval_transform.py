"""The deterministic evaluation view, from Pillow and torch alone.

Resize the shorter side to the model's image size (bicubic, antialiased), centre-crop a square,
scale to [0, 1] and normalise: what torchvision's ``Resize`` + ``CenterCrop`` + ``ToImage`` +
``ToDtype(scale=True)`` + ``Normalize`` give on a PIL image, with the same output pixels
(torchvision resizes PIL images with Pillow, so the same call is made here). Owning these few
steps keeps torchvision, whose import costs about a second, out of every one-image command
(``zero-shot``, ``attn-map``, ``reconstruct``); ``tests/core/data/test_eval_transform.py``
checks them against torchvision's pipeline.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from PIL import Image

# The eval view keeps a centred square, so a long side beyond this many short sides is cropped
# away before resizing: a 1x50000 strip is not first blown up to 224 x 11.2 million pixels.
MAX_EVAL_ASPECT = 2.0


def _centre_box(height: int, width: int, crop_height: int, crop_width: int) -> tuple[int, int, int, int]:
    """The (left, top, right, bottom) box of a centred crop, rounded as torchvision rounds it."""
    top = int(round((height - crop_height) / 2.0))
    left = int(round((width - crop_width) / 2.0))
    return left, top, left + crop_width, top + crop_height


class EvalGeometry:
    """Resize the shorter side to ``image_size`` (bicubic), then centre-crop a square.

    Called on a PIL image, or on an image and its per-pixel class map, which gets the same
    geometry with nearest-neighbour resizing (class ids are never blended). Any size works,
    from 1x1 up; a long side beyond :data:`MAX_EVAL_ASPECT` short sides is first cropped to that,
    which bounds the cost and leaves the final square as good as unchanged.

    Args:
        image_size: side of the square output.
        max_aspect: the longest side kept before resizing, in short sides (at least 1).
    """

    def __init__(self, image_size: int, *, max_aspect: float = MAX_EVAL_ASPECT) -> None:
        if max_aspect < 1:
            raise ValueError(f"max_aspect must be >= 1, got {max_aspect}")
        self.image_size = int(image_size)
        self.max_aspect = max_aspect

    def __call__(self, image: Image.Image, mask: torch.Tensor | None = None):
        """The square view of ``image`` (and of ``mask``, long ``(H, W)`` class ids, when given).

        Returns:
            The PIL image ``image_size`` x ``image_size``; with a mask, ``(image, mask)``, the
            mask long ``(image_size, image_size)``.
        """
        if mask is not None:
            mask = mask.as_subclass(torch.Tensor) if isinstance(mask, torch.Tensor) else torch.as_tensor(mask)
        width, height = image.size
        longest = max(1, int(self.max_aspect * min(height, width)))
        if max(height, width) > longest:
            left, top, right, bottom = _centre_box(height, width, min(height, longest), min(width, longest))
            image = image.crop((left, top, right, bottom))
            mask = mask[top:bottom, left:right] if mask is not None else None
            width, height = right - left, bottom - top
        # The shorter side becomes image_size; the longer one is scaled and truncated, as torchvision does.
        short, long = min(width, height), max(width, height)
        new_short, new_long = self.image_size, int(self.image_size * long / short)
        new_width, new_height = (new_short, new_long) if width <= height else (new_long, new_short)
        if (new_height, new_width) != (height, width):
            image = image.resize((new_width, new_height), Image.BICUBIC)
            if mask is not None:
                # float64 holds any class id exactly; "nearest" is torchvision's mask resize.
                mask = torch.nn.functional.interpolate(mask[None, None].to(torch.float64), size=(new_height, new_width),
                                                       mode="nearest")[0, 0].to(mask.dtype)  # (H, W) -> (H', W')
        box = _centre_box(new_height, new_width, self.image_size, self.image_size)
        image = image.crop(box)
        if mask is None:
            return image
        left, top, right, bottom = box
        return image, mask[top:bottom, left:right].long()


class Normalize:
    """PIL image or uint8 image tensor ``(C, H, W)`` -> float tensor ``(3, H, W)``: scaled to [0, 1],
    minus ``mean``, over ``std`` (a one-channel image is broadcast to three, as torchvision does).

    A batch ``(B, C, H, W)`` works too, and gives bitwise what normalising each image would:
    the operations are elementwise. Bulk readers collate uint8 pixels and normalise a batch at
    once (:meth:`EvalTransform.pixels`), which is cheaper than one image at a time.
    """

    def __init__(self, *, mean: Sequence[float], std: Sequence[float]) -> None:
        if not all(std):
            raise ValueError(f"std must not hold a zero, got {list(std)}")
        self.mean = torch.as_tensor(list(mean), dtype=torch.float32).view(-1, 1, 1)  # (C, 1, 1)
        self.std = torch.as_tensor(list(std), dtype=torch.float32).view(-1, 1, 1)

    def __call__(self, image: Image.Image | torch.Tensor) -> torch.Tensor:
        tensor = image_tensor_u8(image) if isinstance(image, Image.Image) else image
        # The same operations, in the same order, as torchvision's to_dtype(scale=True) and normalize.
        scaled = tensor.to(torch.float32).mul_(1.0 / 255) if not tensor.is_floating_point() else tensor.float()
        return scaled.sub(self.mean).div_(self.std)


def image_tensor_u8(image: Image.Image) -> torch.Tensor:
    """A PIL image's pixels as a uint8 tensor ``(C, H, W)`` (C = 1 for a one-channel image)."""
    array = np.array(image, copy=True)  # (H, W, C), or (H, W) for one channel
    return torch.from_numpy(array).view(image.height, image.width, -1).permute(2, 0, 1)  # -> (C, H, W)


def make_eval_geometry(*, image_size: int) -> EvalGeometry:
    """Resize the shorter side to ``image_size``, then centre-crop a square (see :class:`EvalGeometry`)."""
    return EvalGeometry(image_size)


def make_normalize(*, mean: Sequence[float], std: Sequence[float]) -> Normalize:
    """PIL image or uint8 image tensor -> normalised float tensor ``(3, H, W)`` (see :class:`Normalize`)."""
    return Normalize(mean=mean, std=std)


def make_eval_transform(
    *, image_size: int, mean: Sequence[float], std: Sequence[float]
) -> Callable[[Image.Image], torch.Tensor]:
    """The deterministic evaluation transform.

    Args:
        image_size: side of the square output.
        mean: per-channel normalisation mean.
        std: per-channel normalisation std.

    Returns:
        A callable mapping an RGB PIL image to a float tensor ``(3, image_size, image_size)``.
    """
    return EvalTransform(image_size=image_size, mean=mean, std=std)


class EvalTransform:
    """:class:`EvalGeometry` then :class:`Normalize`; a class, so DataLoader workers started
    with ``spawn`` (macOS) can pickle it."""

    def __init__(self, *, image_size: int, mean: Sequence[float], std: Sequence[float]) -> None:
        self.geometry = EvalGeometry(image_size)
        self.normalize = Normalize(mean=mean, std=std)

    def __call__(self, image: Image.Image) -> torch.Tensor:
        """RGB PIL image -> float tensor ``(3, image_size, image_size)``."""
        return self.normalize(self.geometry(image))

    def pixels(self, image: Image.Image) -> torch.Tensor:
        """The first half: RGB PIL image -> uint8 tensor ``(3, image_size, image_size)``, for readers
        that stack a batch before ``normalize`` (a quarter of the bytes between processes, too)."""
        return image_tensor_u8(self.geometry(image))
