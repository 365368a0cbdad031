"""The eval view without torchvision gives exactly torchvision's pixels (its pipeline as it was
written before, rebuilt here as the oracle), on many sizes and image modes, masks included."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import tv_tensors
from torchvision.transforms import InterpolationMode, v2

from detailclip_cli.core.data import (
    make_eval_geometry,
    make_eval_transform,
    make_normalize,
)
from detailclip_cli.core.data.eval_transform import MAX_EVAL_ASPECT
from detailclip_cli.core.data.transforms import make_eval_transform as reexported

MEAN, STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)


class _CropLongSide:
    """The former torchvision-based long-side crop."""

    def __call__(self, *inputs):
        h, w = v2.functional.get_size(inputs[0])
        longest = max(1, int(MAX_EVAL_ASPECT * min(h, w)))
        if max(h, w) > longest:
            inputs = tuple(v2.functional.center_crop(x, [min(h, longest), min(w, longest)]) for x in inputs)
        return inputs if len(inputs) > 1 else inputs[0]


def torchvision_geometry(size: int) -> v2.Compose:
    return v2.Compose([_CropLongSide(), v2.Resize(size, interpolation=InterpolationMode.BICUBIC, antialias=True),
                       v2.CenterCrop(size)])


def torchvision_normalize() -> v2.Compose:
    return v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean=list(MEAN), std=list(STD))])


def noise_image(width: int, height: int, mode: str, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "L": 1}[mode]
    array = rng.integers(0, 256, size=(height, width, channels), dtype=np.uint8)
    return Image.fromarray(array[..., 0] if channels == 1 else array, mode)


SIZES = [(1, 1), (1, 7), (7, 1), (3, 50), (50, 3), (16, 16), (24, 24), (23, 37), (37, 23), (100, 30), (30, 200),
         (225, 224), (640, 480), (479, 641)]


@pytest.mark.parametrize("mode", ["RGB", "L"])
@pytest.mark.parametrize("out", [24, 64])
def test_eval_transform_equals_torchvision(mode, out):
    ours = make_eval_transform(image_size=out, mean=MEAN, std=STD)
    geometry, normalize = torchvision_geometry(out), torchvision_normalize()
    for k, (w, h) in enumerate(SIZES):
        image = noise_image(w, h, mode, seed=k)
        expected = normalize(geometry(image)).as_subclass(torch.Tensor)
        got = ours(image)
        assert got.shape == expected.shape == (3, out, out), (w, h)
        assert torch.equal(got, expected), (mode, w, h)


def test_normalize_of_a_uint8_tensor_equals_torchvision():
    image = torch.randint(0, 256, (3, 5, 7), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    assert torch.equal(make_normalize(mean=MEAN, std=STD)(image), torchvision_normalize()(image).as_subclass(torch.Tensor))


def test_mask_gets_the_image_geometry_with_nearest_resizing():
    rng = np.random.default_rng(1)
    for w, h in [(9, 5), (5, 9), (40, 6), (13, 13), (3, 1)]:
        image = noise_image(w, h, "RGB", seed=w * h)
        mask = torch.from_numpy(rng.integers(0, 150, size=(h, w)).astype(np.int64))
        got_image, got_mask = make_eval_geometry(image_size=8)(image, mask)
        want_image, want_mask = torchvision_geometry(8)(image, tv_tensors.Mask(mask))
        assert np.array_equal(np.asarray(got_image), np.asarray(want_image)), (w, h)
        assert got_mask.dtype == torch.long and torch.equal(got_mask, want_mask.as_subclass(torch.Tensor)), (w, h)
        assert set(got_mask.unique().tolist()) <= set(mask.unique().tolist())  # ids never blended


def test_transforms_module_reexports_the_same_function():
    assert reexported is make_eval_transform
