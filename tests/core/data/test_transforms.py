"""The training views are torchvision's augmentation, written out for speed: against the former
torchvision pipeline (rebuilt here as the oracle), a seeded view has the same crop, flip, jitter
order and factors, grey, blur and solarise draws, and pixels that differ only by that
pipeline's uint8 rounding between steps."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import InterpolationMode, v2
from torchvision.transforms.v2 import functional as F

from detailclip_cli.core.data.transforms import (
    AugmentConfig,
    adjust_hue_,
    blur_kernel_size,
    gaussian_blur,
    image_tensor,
    make_view_transform,
)

MEAN, STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
LEVEL = 1 / (torch.tensor(STD).view(3, 1, 1) * 255)  # one uint8 level, in normalised units


def torchvision_view(size: int, aug: AugmentConfig, view: int) -> v2.Compose:
    """The view pipeline as it was written with torchvision (0.2.0 before this change)."""
    s = aug.color_jitter
    return v2.Compose([
        v2.ToImage(),
        v2.RandomResizedCrop(size, scale=aug.crop_scale, ratio=aug.crop_ratio,
                             interpolation=InterpolationMode.BICUBIC, antialias=True),
        v2.RandomHorizontalFlip(p=aug.hflip),
        v2.RandomApply([v2.ColorJitter(brightness=s, contrast=s, saturation=s / 2, hue=min(0.5, s / 4))],
                       p=aug.color_jitter_prob),
        v2.RandomGrayscale(p=aug.grayscale),
        v2.RandomApply([v2.GaussianBlur(kernel_size=blur_kernel_size(size), sigma=aug.blur_sigma)], p=aug.blur[view - 1]),
        v2.RandomSolarize(threshold=128, p=aug.solarize[view - 1]),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(mean=list(MEAN), std=list(STD)),
    ])


def photo(seed: int, size=(90, 70)) -> Image.Image:
    """A smooth colourful image (noise would make every rounding difference look large)."""
    y, x = np.mgrid[0:size[1], 0:size[0]] / max(size)
    phase = seed * 0.7
    array = np.stack([np.sin(6 * x + phase), np.cos(5 * y - phase), np.sin(4 * (x + y) + 2 * phase)], -1)
    return Image.fromarray(((array + 1) * 127.5).astype(np.uint8))


def both(aug: AugmentConfig, view: int, seed: int, image: Image.Image, size: int = 32):
    torch.manual_seed(seed)
    theirs = torchvision_view(size, aug, view)(image).as_subclass(torch.Tensor)
    torch.manual_seed(seed)
    ours = make_view_transform(image_size=size, mean=MEAN, std=STD, aug=aug, view=view)(image)
    return ours, theirs


def test_crop_and_flip_are_torchvisions_pixel_for_pixel():
    aug = AugmentConfig(hflip=0.5, color_jitter=0, grayscale=0, blur=(0, 0), solarize=(0, 0))
    for seed in range(12):
        image = photo(seed, size=(90 + 7 * seed, 70))
        ours, theirs = both(aug, 1, seed, image)
        torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=0)
    # A PIL image and its uint8 tensor give the same view.
    view = make_view_transform(image_size=32, mean=MEAN, std=STD, aug=AugmentConfig(), view=2)
    torch.manual_seed(3)
    a = view(photo(3))
    torch.manual_seed(3)
    assert torch.equal(a, view(image_tensor(photo(3))))


@pytest.mark.parametrize("view", [1, 2])
def test_full_views_draw_what_torchvision_draws(view):
    """Every step on, at the default probabilities plus a flip: the same draws give views within
    uint8 rounding of torchvision's (which truncates to uint8 after each jitter step)."""
    aug = AugmentConfig(hflip=0.5, blur=(0.5, 0.5), solarize=(0.3, 0.3))
    for seed in range(24):
        ours, theirs = both(aug, view, seed, photo(seed))
        levels = ((ours - theirs) / LEVEL).abs()  # (3, S, S), in uint8 levels
        # torchvision truncates (not rounds) to uint8 after each of the four jitter steps, so it
        # runs up to about 2 levels darker; a different draw is over 10 (next test).
        assert levels.mean() < 3.0, (seed, levels.mean())
        assert levels.flatten().quantile(0.95) < 4.0, seed


def test_a_different_draw_is_far_from_torchvisions():
    """The tolerance above is tight enough to tell views apart: the next seed is far away."""
    aug = AugmentConfig()
    ours, _ = both(aug, 1, 0, photo(0))
    _, other = both(aug, 1, 1, photo(0))
    assert ((ours - other) / LEVEL).abs().mean() > 10


def test_hue_and_blur_equal_torchvisions_float_kernels():
    image = torch.rand(3, 40, 37, generator=torch.Generator().manual_seed(0))
    image[:, :3, :3] = 0.5  # grey pixels: any hue
    image[:, 5, 5] = torch.tensor([0.7, 0.7, 0.2])  # ties between channels
    image[:, 6, 6] = torch.tensor([0.3, 0.9, 0.9])
    for shift in (-0.5, -0.1, 0.0, 0.03, 0.25, 0.5):
        torch.testing.assert_close(adjust_hue_(image.clone(), shift), F.adjust_hue(image, shift), atol=1e-5, rtol=0)
    for k, sigma in ((23, 0.1), (23, 1.0), (23, 2.0), (3, 0.5), (5, 1.7)):
        torch.testing.assert_close(gaussian_blur(image, k, sigma), F.gaussian_blur(image, [k, k], [sigma, sigma]),
                                   atol=1e-5, rtol=0)
    assert gaussian_blur(torch.rand(3, 2, 5), 23, 2.0).shape == (3, 2, 5)  # smaller than the kernel
