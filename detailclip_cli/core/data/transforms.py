"""Image transforms: two augmented global views for training, one deterministic view for eval.

A training view is torchvision's ``RandomResizedCrop`` (bicubic) -> ``RandomHorizontalFlip`` ->
``RandomApply(ColorJitter)`` -> ``RandomGrayscale`` -> ``RandomApply(GaussianBlur)`` ->
``RandomSolarize`` -> ``Normalize``, written out here for speed (one CPU core prepares the
views of a ``DataLoader`` worker): the crop and resize are one Pillow call on the decoded
image, and everything after it runs on one float tensor, converted once, instead of uint8
tensors rounded after every step. The random draws are torchvision's, in its order, from torch's
global generator, so a seeded view has the same crop box, order of jitter operations and
factors, and the same coin flips as torchvision's pipeline; its pixels differ from it only by
that pipeline's uint8 rounding between steps (see ``tests/core/data/test_transforms.py``).
A caller that seeds the generator per item gets reproducible views; see ``TwoViewDataset``.

The eval view lives in :mod:`.eval_transform` (no torchvision, for start-up time) and is
re-exported here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
from PIL import Image

from detailclip_cli.core.data.eval_transform import (
    MAX_EVAL_ASPECT,
    EvalGeometry,
    EvalTransform,
    Normalize,
    make_eval_geometry,
    make_eval_transform,
    make_normalize,
)

__all__ = [
    "MAX_EVAL_ASPECT", "REFERENCE_IMAGE_SIZE", "SMALL_IMAGE_SIZE", "AugmentConfig", "EvalGeometry", "EvalTransform",
    "Normalize", "ViewTransform", "blur_kernel_size", "gaussian_blur", "image_tensor", "make_eval_geometry", "make_eval_transform",
    "make_normalize", "make_view_transform",
]

# The photos the reference recipes were tuned on are 224 px wide; tiny images scale from there.
REFERENCE_IMAGE_SIZE = 224
SMALL_IMAGE_SIZE = 96


@dataclass(frozen=True, kw_only=True)
class AugmentConfig:
    """Augmentation strengths for the two global views (the DetailCLIP authors' recipe).

    Attributes:
        crop_scale: area fraction range of the random resized crop.
        crop_ratio: aspect ratio range of the random resized crop.
        hflip: probability of a horizontal flip (none by default, as the authors; BYOL and DINO
            flip half the time).
        color_jitter: strength ``s``: brightness and contrast ``s``, saturation ``s / 2``,
            hue ``s / 4``; 0 turns jitter off.
        color_jitter_prob: probability that jitter is applied at all.
        grayscale: probability of converting to grey.
        blur: Gaussian-blur probability for view 1 and view 2: 0.1 on both, as the authors
            (BYOL and DINO make the views asymmetric: (1.0, 0.1)).
        blur_sigma: range of the blur's standard deviation, in pixels.
        solarize: solarisation probability for view 1 and view 2: 0.2 on both, as the
            authors (BYOL and DINO: (0.0, 0.2)).
    """

    crop_scale: tuple[float, float] = (0.14, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    hflip: float = 0.0
    color_jitter: float = 0.4
    color_jitter_prob: float = 0.8
    grayscale: float = 0.2
    blur: tuple[float, float] = (0.1, 0.1)
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    solarize: tuple[float, float] = (0.2, 0.2)

    def __post_init__(self) -> None:
        lo, hi = self.crop_scale
        if not 0.0 < lo <= hi <= 1.0:
            raise ValueError(f"crop_scale must satisfy 0 < low <= high <= 1, got {self.crop_scale}")
        probabilities = {
            "hflip": (self.hflip,),
            "color_jitter_prob": (self.color_jitter_prob,),
            "grayscale": (self.grayscale,),
            "blur": self.blur,
            "solarize": self.solarize,
        }
        for name, values in probabilities.items():
            if not all(0.0 <= p <= 1.0 for p in values):
                raise ValueError(f"{name} must be probabilities in [0, 1], got {values}")
        if self.color_jitter < 0:
            raise ValueError(f"color_jitter must be >= 0, got {self.color_jitter}")

    @classmethod
    def for_image_size(cls, image_size: int, **strengths) -> AugmentConfig:
        """Defaults (or ``strengths``, any fields of this class) adjusted to the training resolution.

        At 96 px and below a 14 % crop is a few dozen pixels: too little of the image for two
        views to share content, so the smallest crop grows to 35 %. Blur radii are set for
        224 px photos; on tiny images they would erase fine strokes, so sigma shrinks with
        the image (the kernel size already follows the image size in
        :func:`make_view_transform`).

        Args:
            image_size: side of the square training views, in pixels.
            **strengths: fields to set, e.g. a run's ``hflip``, ``blur`` and ``solarize``.
        """
        config = cls(**strengths)
        if image_size <= SMALL_IMAGE_SIZE:
            sigma_max = max(0.5, config.blur_sigma[1] * image_size / REFERENCE_IMAGE_SIZE)
            crop_scale = config.crop_scale if "crop_scale" in strengths else (0.35, 1.0)  # given: kept
            config = replace(config, crop_scale=crop_scale, blur_sigma=(config.blur_sigma[0], sigma_max))
        return config


def blur_kernel_size(image_size: int) -> int:
    """An odd kernel about a tenth of the image side (23 px at 224, as in BYOL), at least 3."""
    k = max(3, int(round(0.1 * image_size)))
    return k if k % 2 == 1 else k + 1


def _gaussian_1d(size: int, sigma: float) -> torch.Tensor:
    """torchvision's 1-D Gaussian kernel: ``size`` taps, normalised to sum 1."""
    half = (size - 1) * 0.5
    x = torch.linspace(-half, half, steps=size)
    kernel = torch.exp(-0.5 * (x / sigma).pow(2))
    return kernel / kernel.sum()


# Kernel taps below this weight are skipped: together they move no pixel by more than 1e-5.
_TAP_FLOOR = 1e-7


def gaussian_blur(image: torch.Tensor, kernel_size: int, sigma: float) -> torch.Tensor:
    """torchvision's ``gaussian_blur`` (its kernel, reflect padding) as two 1-D passes of
    shifted slices.

    A Gaussian kernel is the outer product of its 1-D ones, so rows then columns give the 2-D
    result up to float rounding: at 224 px with the 23-tap kernel, 2 x 23 instead of 23 x 23
    multiply-adds per pixel. Each pass adds weighted shifted slices of the padded image, which on
    one core is about twice as fast as a grouped ``conv2d``; the far tails of a narrow kernel
    (taps under ``1e-7``) are skipped.

    Args:
        image: float ``(C, H, W)``.
        kernel_size: odd number of taps.
        sigma: standard deviation in pixels.

    Returns:
        float ``(C, H, W)``.
    """
    height, width = image.shape[1:]
    taps = _gaussian_1d(kernel_size, sigma)
    reach = int((taps >= _TAP_FLOOR).nonzero().min())  # taps [reach, k - reach) are kept
    taps = taps[reach:kernel_size - reach].tolist()
    half = len(taps) // 2
    # Reflect padding needs more pixels than the pad on each side; a smaller image is padded as
    # much as it can be, then edge-replicated (torchvision would fail on it).
    pad = min(half, height - 1, width - 1)
    padded = torch.nn.functional.pad(image[None], [pad] * 4, mode="reflect")[0] if pad > 0 else image
    if pad < half:
        padded = torch.nn.functional.pad(padded[None], [half - pad] * 4, mode="replicate")[0]
    rows = padded[:, :, :width] * taps[0]  # (C, H + 2h, W)
    for i, weight in enumerate(taps[1:], 1):
        rows.add_(padded[:, :, i:i + width], alpha=weight)
    out = rows[:, :height] * taps[0]  # (C, H, W)
    for i, weight in enumerate(taps[1:], 1):
        out.add_(rows[:, i:i + height], alpha=weight)
    return out


# Hue: each output channel of an HSV hue rotation, as a function of the pixel's max, chroma and
# new hue; the offsets are those of R, G and B in the HSV -> RGB formula.
_HUE_OFFSETS = torch.tensor([5.0, 3.0, 1.0]).view(3, 1, 1)
_GREY_WEIGHTS = (0.2989, 0.587, 0.114)  # torchvision's (ITU-R 601-2 luma)


def _grey(image: torch.Tensor) -> torch.Tensor:
    """Luma of a float RGB image: ``(3, H, W)`` -> ``(1, H, W)``."""
    r, g, b = image.unbind(0)
    return r.mul(_GREY_WEIGHTS[0]).add_(g, alpha=_GREY_WEIGHTS[1]).add_(b, alpha=_GREY_WEIGHTS[2]).unsqueeze(0)


def _blend_(image: torch.Tensor, other: torch.Tensor | float, ratio: float) -> torch.Tensor:
    """``ratio * image + (1 - ratio) * other``, clamped to [0, 1], in place (torchvision's blend)."""
    image.mul_(ratio)
    if isinstance(other, torch.Tensor):
        image.add_(other, alpha=1.0 - ratio)
    else:
        image.add_(other * (1.0 - ratio))
    return image.clamp_(0.0, 1.0)


def adjust_hue_(image: torch.Tensor, shift: float) -> torch.Tensor:
    """Rotate the hue of a float RGB image in [0, 1] by ``shift`` turns, in place.

    The HSV round trip torchvision makes, in closed form: rotating the hue keeps each pixel's
    max, min and chroma C = max - min, and channel n of the result is
    ``min + C * clamp(|k - 2| - 1, 0, 1)`` with k = (n + 6 h') mod 6 for the new hue h'
    (n = 5, 3, 1 for R, G, B; the usual ``max - C * clamp(min(k, 4 - k), 0, 1)`` rewritten).
    Masks are multiplied in rather than selected with ``torch.where``, and the modulo is a
    floor: each several times faster on one core, and the whole about a tenth of torchvision's.

    Args:
        image: float ``(3, H, W)`` in [0, 1].
        shift: in [-0.5, 0.5].
    """
    r, g, b = image.unbind(0)  # (H, W) each
    high, low = image.amax(0), image.amin(0)
    chroma = high - low
    # torchvision's cases, a tie going to red, then green.
    is_r = (high == r).to(image.dtype)
    is_g = (high == g).to(image.dtype).mul_(1.0 - is_r)
    is_b = 1.0 - is_r - is_g
    # The hue in sixths of a turn, times the chroma (a grey pixel, chroma 0, gets hue 0).
    h6 = (g - b).mul_(is_r)
    h6.add_((b - r).add_(chroma, alpha=2.0).mul_(is_g)).add_((r - g).add_(chroma, alpha=4.0).mul_(is_b))
    h6.div_(chroma.clamp_min(1e-12)).add_(6.0 * shift + 12.0)  # (H, W), now positive
    k = h6.unsqueeze(0).add(_HUE_OFFSETS)  # (3, H, W)
    k.sub_(k.div(6.0).floor_().mul_(6.0))  # k mod 6
    k.sub_(2.0).abs_().sub_(1.0).clamp_(0.0, 1.0)
    return torch.add(low, k.mul_(chroma), out=image)


class ViewTransform:
    """One augmented training view: RGB PIL image -> normalised float tensor ``(3, S, S)``.

    See the module docstring for the steps, and :func:`make_view_transform` for the arguments.
    Draws from torch's global generator, in torchvision's order.
    """

    def __init__(self, *, image_size: int, mean: Sequence[float], std: Sequence[float], aug: AugmentConfig,
                 view: int) -> None:
        if view not in (1, 2):
            raise ValueError(f"view must be 1 or 2, got {view}")
        self.image_size = int(image_size)
        self.aug = aug
        self.hflip = aug.hflip
        s = aug.color_jitter
        # ColorJitter's ranges: brightness and contrast 1 +- s, saturation 1 +- s/2, hue +- s/4.
        self.jitter_p = aug.color_jitter_prob if s > 0 else 0.0
        self.jitter_ranges = ((max(0.0, 1 - s), 1 + s), (max(0.0, 1 - s), 1 + s),
                              (max(0.0, 1 - s / 2), 1 + s / 2), (-min(0.5, s / 4), min(0.5, s / 4)))
        self.grayscale_p = aug.grayscale
        self.blur_p = aug.blur[view - 1]
        self.blur_kernel = blur_kernel_size(image_size)
        self.solarize_p = aug.solarize[view - 1]
        self.log_ratio = (math.log(aug.crop_ratio[0]), math.log(aug.crop_ratio[1]))
        self.mean = torch.as_tensor(list(mean), dtype=torch.float32).view(3, 1, 1)
        self.std = torch.as_tensor(list(std), dtype=torch.float32).view(3, 1, 1)

    def crop_box(self, width: int, height: int) -> tuple[int, int, int, int]:
        """``RandomResizedCrop``'s box (left, top, right, bottom), drawn as torchvision draws it."""
        area = height * width
        lo, hi = self.aug.crop_scale
        for _ in range(10):
            target_area = area * torch.empty(1).uniform_(lo, hi).item()
            aspect = math.exp(torch.empty(1).uniform_(*self.log_ratio).item())
            w = int(round(math.sqrt(target_area * aspect)))
            h = int(round(math.sqrt(target_area / aspect)))
            if 0 < w <= width and 0 < h <= height:
                top = int(torch.randint(0, height - h + 1, size=(1,)).item())
                left = int(torch.randint(0, width - w + 1, size=(1,)).item())
                return left, top, left + w, top + h
        # Ten misses: the largest centred crop within the ratio range.
        in_ratio = width / height
        lo_ratio, hi_ratio = self.aug.crop_ratio
        w, h = width, height
        if in_ratio < lo_ratio:
            h = int(round(w / lo_ratio))
        elif in_ratio > hi_ratio:
            w = int(round(h * hi_ratio))
        top, left = (height - h) // 2, (width - w) // 2
        return left, top, left + w, top + h

    def jitter_(self, image: torch.Tensor) -> torch.Tensor:
        """``ColorJitter``: brightness, contrast, saturation and hue in a random order, in place."""
        order = torch.randperm(4).tolist()
        factors = [float(torch.empty(1).uniform_(lo, hi).item()) for lo, hi in self.jitter_ranges]
        for op in order:
            factor = factors[op]
            if op == 0:
                image.mul_(factor).clamp_(0.0, 1.0)
            elif op == 1:
                _blend_(image, _grey(image).mean().item(), factor)
            elif op == 2:
                _blend_(image, _grey(image), factor)
            else:
                adjust_hue_(image, factor)
        return image

    def __call__(self, image: Image.Image | torch.Tensor) -> torch.Tensor:
        """The view of an RGB PIL image, or of its uint8 ``(3, H, W)`` tensor (:func:`image_tensor`:
        convert once when making several views of one image)."""
        pixels = image_tensor(image) if isinstance(image, Image.Image) else image
        left, top, right, bottom = self.crop_box(pixels.shape[2], pixels.shape[1])
        # torch's uint8 antialiased bicubic, on a view of the crop: torchvision's resized_crop, pixel for pixel.
        crop = pixels[None, :, top:bottom, left:right]  # (1, 3, h, w), no copy
        view = torch.nn.functional.interpolate(crop, size=(self.image_size, self.image_size), mode="bicubic",
                                               antialias=True, align_corners=False)[0]  # -> (3, S, S)
        if bool(torch.rand(1) < self.hflip):  # drawn even at p = 0, as torchvision does
            view = view.flip(-1)
        # One conversion to float in [0, 1]; every step after it in float.
        out = view.to(torch.float32).mul_(1.0 / 255)
        if self.jitter_p > 0 and bool(torch.rand(1) < self.jitter_p):
            self.jitter_(out)
        if self.grayscale_p > 0 and bool(torch.rand(1) < self.grayscale_p):
            out = _grey(out).expand(3, -1, -1).contiguous()
        if self.blur_p > 0 and bool(torch.rand(1) < self.blur_p):
            sigma = torch.empty(1).uniform_(*self.aug.blur_sigma).item()
            out = gaussian_blur(out, self.blur_kernel, sigma)
        if self.solarize_p > 0 and bool(torch.rand(1) < self.solarize_p):
            # torchvision's uint8 threshold 128: values from 128/255 up are inverted.
            flip = (out >= 128 / 255).to(out.dtype)
            out.add_(flip.mul_(out.mul(-2.0).add_(1.0)))  # x -> 1 - x where flipped
        return out.sub_(self.mean).div_(self.std)


def image_tensor(image: Image.Image) -> torch.Tensor:
    """An RGB PIL image as a uint8 tensor ``(3, H, W)`` (channels-last in memory, which torch's
    uint8 resize reads fastest)."""
    return torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1)  # (H, W, 3) -> (3, H, W)


def make_view_transform(
    *,
    image_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    aug: AugmentConfig,
    view: int,
) -> ViewTransform:
    """The augmentation pipeline of one of the two global views.

    Args:
        image_size: side of the square output.
        mean: per-channel normalisation mean (of the model being trained).
        std: per-channel normalisation std.
        aug: augmentation strengths.
        view: 1 or 2; selects the per-view blur and solarisation probabilities.

    Returns:
        A callable mapping an RGB PIL image to a normalised float tensor ``(3, image_size,
        image_size)``.
    """
    return ViewTransform(image_size=image_size, mean=mean, std=std, aug=aug, view=view)
