"""What every recipe does before its model exists, and the training data it reads.

:func:`prepare` is the setup both recipes (``pretrain``, ``distill``) share, in this order:
check the configs, join the process group on the device, read and check the training data,
seed. :func:`build_train_data` is the only place in training that looks at the ``--data``
value: the data is read at once (so bad data fails before a model or a teacher is built), and
its views are made by :meth:`TrainData.dataset` once the model (with its tokenizer) exists.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import torch

from detailclip_cli.core.config import ModelConfig, TrainConfig, VisionConfig
from detailclip_cli.core.data import AugmentConfig, DataSource, MapSource, TwoViewDataset, open_source
from detailclip_cli.core.device import resolve_device, seed_everything
from detailclip_cli.core.distributed import join_process_group
from detailclip_cli.core.training.loop import check_batch_fits


def train_augment(image_size: int, chiral: bool, cfg: TrainConfig | None = None) -> AugmentConfig:
    """The two global views' augmentation at ``image_size``, with the flip, blur, solarize,
    jitter, grey and crop settings of ``cfg`` (else the defaults); never mirrored for ``chiral`` data (the demo
    set's digits: a mirrored view would not show the digit its caption names)."""
    strengths = {} if cfg is None else {"hflip": cfg.hflip, "blur": cfg.blur, "solarize": cfg.solarize,
                                        "color_jitter": cfg.color_jitter, "grayscale": cfg.grayscale}
    if cfg is not None and cfg.crop_scale is not None:
        strengths["crop_scale"] = tuple(cfg.crop_scale)
    aug = AugmentConfig.for_image_size(image_size, **strengths)
    if chiral:
        aug = dataclasses.replace(aug, hflip=0.0)
    return aug


@dataclasses.dataclass
class TrainData:
    """The training data a ``--data`` value names, read and checked.

    Attributes:
        source: what the ``--data`` value names: samples read whole, or tar shards that stream.
        cfg: the training settings (batch size, seed, samples per epoch).
    """

    source: DataSource
    cfg: TrainConfig

    def dataset(self, views: Callable[..., TwoViewDataset], *, vision: VisionConfig,
                tokenize: Callable[[list[str]], torch.Tensor] | None, **options):
        """The training dataset: ``views`` (``TwoViewDataset`` or a subclass) over this data.

        Args:
            views: the dataset class that makes a sample's views, called with the samples, the
                view geometry and normalisation of ``vision``, the augmentation, ``tokenize``,
                the seed and ``options``.
            vision: the image tower's settings (view size, mean, std).
            tokenize: the model's tokenizer, or None for no captions.
            **options: further arguments of ``views`` (e.g. ``local_crops``).

        Returns:
            ``views``'s dataset, or for tar shards a ``ShardDataset`` streaming through it.
        """
        cfg = self.cfg
        samples = self.source if isinstance(self.source, MapSource) else None
        dataset = views(samples, image_size=vision.image_size, mean=vision.mean, std=vision.std,
                        aug=train_augment(vision.image_size, self.source.chiral, cfg), tokenize=tokenize, seed=cfg.seed,
                        **options)
        if samples is None:  # the views above make the items of the images the shards stream
            dataset = self.source.stream(dataset, seed=cfg.seed)
        return dataset


def build_train_data(data: str | Path, cfg: TrainConfig, *, captions: bool = True) -> TrainData:
    """Read the training data ``data`` names and check it holds a batch.

    Args:
        data: ``"demo"``, a folder, a CSV/TSV file, or tar shards.
        cfg: the training settings.
        captions: whether samples need captions (pretraining); without, a folder of plain
            images is read too (distillation never reads captions).

    Raises:
        DataError, ConfigError: the data is missing, unreadable or smaller than one batch.
    """
    source = open_source(data, split="train", images_only=not captions, samples_per_epoch=cfg.samples_per_epoch)
    check_batch_fits(len(source), cfg)
    return TrainData(source, cfg)


class Prepared(NamedTuple):
    """What :func:`prepare` set up: the device this process trains on, the training data, and the
    training settings with every length left at one epoch (``None``) resolved in steps."""

    device: torch.device
    data: TrainData
    cfg: TrainConfig


def prepare(model_cfg: ModelConfig, cfg: TrainConfig, *, device: str, data: str | Path, captions: bool = True,
            check: Callable[[], None] | None = None) -> Prepared:
    """The setup both training entry points share: check the configs (then ``check``, the entry
    point's own settings), join the process group on the device, read the training data, resolve
    the lengths left at one epoch (``TrainConfig.with_epoch_length``) from it, seed.

    The lengths are resolved here, where the data is known, so a library call and the CLI (whose
    ``settings.new_configs`` resolves them earlier, to record them) train alike.

    Everything random that follows (the model's initialisation first) depends on ``cfg.seed``
    alone; a recipe that builds anything else randomly before its model (a teacher) does it
    under a forked RNG.

    Raises:
        ConfigError, DataError: unusable settings, device or data.
    """
    model_cfg.validate()
    cfg.validate(model_cfg)
    if check is not None:
        check()
    dev = join_process_group(resolve_device(device))
    train_data = build_train_data(data, cfg, captions=captions)
    if cfg.epoch_lengths_unset():
        cfg = cfg.with_epoch_length(max(1, len(train_data.source) // cfg.batch_size))
        train_data = dataclasses.replace(train_data, cfg=cfg)
    seed_everything(cfg.seed)
    return Prepared(dev, train_data, cfg)
