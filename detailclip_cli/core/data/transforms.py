"""Image transforms: two augmented global views for training, one deterministic view for eval.

All randomness comes from torch's global generator (torchvision's transforms draw from it), so
a caller that seeds it per item gets reproducible views; see ``TwoViewDataset``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import torch
from PIL import Image
from torchvision import tv_tensors
from torchvision.transforms import InterpolationMode, v2

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


class SeparableGaussianBlur(v2.GaussianBlur):
    """``v2.GaussianBlur`` as two 1-D passes (rows, then columns) instead of one 2-D convolution.

    The same random sigma (drawn by the parent, so seeded views draw the same numbers), the same
    reflect padding and kernel: a Gaussian kernel is the outer product of its 1-D ones, so the
    result is the same up to float rounding (a uint8 pixel may differ by 1). At 224 px with the
    23-tap kernel this is 2 x 23 instead of 23 x 23 multiply-adds per pixel: 40 ms -> 2 ms a view
    on one core, which made blur the loader's largest cost.
    """

    def transform(self, inpt, params: dict):
        if not isinstance(inpt, torch.Tensor) or inpt.ndim != 3:
            return super().transform(inpt, params)
        sigma_x, sigma_y = params["sigma"]
        kx, ky = self.kernel_size
        image = inpt.to(torch.float32)[None]  # (1, C, H, W)
        c = image.shape[1]
        row = _gaussian_1d(kx, sigma_x).view(1, 1, 1, kx).expand(c, 1, 1, kx)
        col = _gaussian_1d(ky, sigma_y).view(1, 1, ky, 1).expand(c, 1, ky, 1)
        image = torch.nn.functional.pad(image, [kx // 2, kx // 2, ky // 2, ky // 2], mode="reflect")
        image = torch.nn.functional.conv2d(image, row, groups=c)
        image = torch.nn.functional.conv2d(image, col, groups=c)[0]
        out = image.round_().to(inpt.dtype) if not inpt.is_floating_point() else image.to(inpt.dtype)
        return tv_tensors.wrap(out, like=inpt) if isinstance(inpt, tv_tensors.Image) else out


def _gaussian_1d(size: int, sigma: float) -> torch.Tensor:
    """torchvision's 1-D Gaussian kernel: ``size`` taps, normalised to sum 1."""
    half = (size - 1) * 0.5
    x = torch.linspace(-half, half, steps=size)
    kernel = torch.exp(-0.5 * (x / sigma).pow(2))
    return kernel / kernel.sum()


def make_view_transform(
    *,
    image_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    aug: AugmentConfig,
    view: int,
) -> Callable[[Image.Image], torch.Tensor]:
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
    if view not in (1, 2):
        raise ValueError(f"view must be 1 or 2, got {view}")
    blur_p = aug.blur[view - 1]
    solarize_p = aug.solarize[view - 1]
    s = aug.color_jitter
    steps: list[Callable] = [
        # uint8 tensors from here on: v2's tensor kernels are fast and antialiased.
        v2.ToImage(),
        v2.RandomResizedCrop(
            image_size,
            scale=aug.crop_scale,
            ratio=aug.crop_ratio,
            interpolation=InterpolationMode.BICUBIC,
            antialias=True,
        ),
        v2.RandomHorizontalFlip(p=aug.hflip),
    ]
    if s > 0 and aug.color_jitter_prob > 0:
        jitter = v2.ColorJitter(brightness=s, contrast=s, saturation=s / 2, hue=min(0.5, s / 4))
        steps.append(v2.RandomApply([jitter], p=aug.color_jitter_prob))
    if aug.grayscale > 0:
        steps.append(v2.RandomGrayscale(p=aug.grayscale))
    if blur_p > 0:
        blur = SeparableGaussianBlur(kernel_size=blur_kernel_size(image_size), sigma=aug.blur_sigma)
        steps.append(v2.RandomApply([blur], p=blur_p))
    if solarize_p > 0:
        steps.append(v2.RandomSolarize(threshold=128, p=solarize_p))  # uint8 mid-grey
    steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean=list(mean), std=list(std))]
    return v2.Compose(steps)


# The eval view keeps a centred square, so a long side beyond this many short sides is cropped
# away before resizing: a 1x50000 strip is not first blown up to 224 x 11.2 million pixels.
MAX_EVAL_ASPECT = 2.0


class CropLongSide:
    """Centre-crop the long side to at most ``max_aspect`` times the short side.

    Called like a ``v2`` transform, on one input or several (an image and its
    ``tv_tensors.Mask``), which get the same crop; the size is read from the first.
    """

    def __init__(self, max_aspect: float) -> None:
        if max_aspect < 1:
            raise ValueError(f"max_aspect must be >= 1, got {max_aspect}")
        self.max_aspect = max_aspect

    def __call__(self, *inputs):
        h, w = v2.functional.get_size(inputs[0])
        longest = max(1, int(self.max_aspect * min(h, w)))
        if max(h, w) > longest:
            size = [min(h, longest), min(w, longest)]
            inputs = tuple(v2.functional.center_crop(x, size) for x in inputs)
        return inputs if len(inputs) > 1 else inputs[0]


def make_eval_geometry(*, image_size: int) -> Callable:
    """Resize the shorter side to ``image_size``, then centre-crop a square.

    Works on PIL images and on ``tv_tensors`` jointly, so a ``tv_tensors.Mask`` passed with the
    image gets the same geometry (with nearest-neighbour resizing). Any size works, from 1x1 up;
    very long sides are first cropped to :data:`MAX_EVAL_ASPECT` times the short side, which
    bounds the cost and leaves the final square as good as unchanged.
    """
    return v2.Compose(
        [
            CropLongSide(MAX_EVAL_ASPECT),
            v2.Resize(image_size, interpolation=InterpolationMode.BICUBIC, antialias=True),
            v2.CenterCrop(image_size),
        ]
    )


def make_normalize(*, mean: Sequence[float], std: Sequence[float]) -> Callable:
    """PIL image or uint8 image tensor -> normalised float tensor ``(3, H, W)``."""
    return v2.Compose(
        [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean=list(mean), std=list(std))]
    )


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
    return v2.Compose([make_eval_geometry(image_size=image_size), make_normalize(mean=mean, std=std)])
