"""Images without captions, and DINO's multi-crop views (two global views plus small local crops)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from pathlib import Path

import torch

from detailclip_cli.core.data.dataset import TwoViewDataset, item_seed
from detailclip_cli.core.data.samples import Sample
from detailclip_cli.core.data.sources import open_source
from detailclip_cli.core.data.transforms import AugmentConfig, make_view_transform

# DINO's local crops: 5-35 % of the image, at 3/7 of the global side (96 px for 224 px globals).
LOCAL_CROP_SCALE = (0.05, 0.35)


LOCAL_SIZE_FRACTION = 3 / 7


LOCAL_BLUR = 0.5


# Local views draw from their own random stream, so adding them leaves the global views as they were.
_LOCAL_STREAM = 0x10CA1


def image_samples(data: str | Path, *, split: str = "train") -> list[Sample]:
    """The images of a data spec, with or without captions (distillation never reads them).

    ``demo`` and CSV/TSV files are read as for pretraining. A folder is searched recursively
    for images (its ``split`` sub-folder when it has one), each given an empty caption, so a
    plain folder of photos works. Tar shards are not read here (they stream: see
    :func:`~detailclip_cli.core.data.sources.open_source`).

    Raises:
        DataError: the spec is missing or holds no images.
    """
    return open_source(data, split=split, images_only=True, streaming=False)


def local_crop_size(image_size: int, patch_size: int) -> int:
    """The side of local crops: 3/7 of the global side, rounded up to whole patches."""
    return patch_size * math.ceil(image_size * LOCAL_SIZE_FRACTION / patch_size)


class MultiCropDataset(TwoViewDataset):
    """Two global views plus ``local_crops`` small local views of each image (DINO's multi-crop).

    Local views are random resized crops of ``LOCAL_CROP_SCALE`` of the image at ``local_size``
    px, with the global views' colour augmentation and blur half the time. Their random draws
    depend only on ``(seed, epoch, index)``, from a stream of their own, so resumed runs see the
    same crops and ``local_crops=0`` gives exactly the items of a :class:`TwoViewDataset`.

    Args:
        samples, image_size, mean, std, aug, tokenize, seed: as for :class:`TwoViewDataset`.
        local_crops: N local views per item (0 = none).
        local_size: their side in pixels (a multiple of the patch size).
    """

    def __init__(self, samples: Sequence[Sample] | None, *, image_size: int, mean: Sequence[float],
                 std: Sequence[float], aug: AugmentConfig, tokenize, seed: int, local_crops: int = 0,
                 local_size: int):
        super().__init__(samples, image_size=image_size, mean=mean, std=std, aug=aug, tokenize=tokenize, seed=seed)
        self.local_crops = int(local_crops)
        local_aug = dataclasses.replace(aug, crop_scale=LOCAL_CROP_SCALE, blur=(LOCAL_BLUR, LOCAL_BLUR),
                                        solarize=(0.0, 0.0))
        self.local = make_view_transform(image_size=local_size, mean=mean, std=std, aug=local_aug, view=1)

    def make_item(self, image, i: int, caption: str) -> dict[str, torch.Tensor]:
        """A :class:`TwoViewDataset` item plus ``local_views`` (N, 3, h, h) when N > 0."""
        item = super().make_item(image, i, caption)
        if self.local_crops:
            with torch.random.fork_rng(devices=[]):
                torch.default_generator.manual_seed(item_seed(self.seed, self.epoch, i) ^ _LOCAL_STREAM)
                item["local_views"] = torch.stack([self.local(image) for _ in range(self.local_crops)])
        return item
