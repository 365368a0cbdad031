"""The pretraining recipe: build DetailCLIP, its objective and two-view data, and hand them to the loop."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from detailclip_cli.core.config import ModelConfig, TrainConfig
from detailclip_cli.core.distributed import (
    join_process_group,
)
from detailclip_cli.core.method.objective import DetailCLIPObjective
from detailclip_cli.core.model.detailclip import DetailCLIP
from detailclip_cli.core.device import resolve_device, seed_everything
from detailclip_cli.core.training.loop import TrainingRun, check_batch_fits, fit


def train_augment(image_size: int, data: str | Path):
    """The two global views' augmentation for ``data`` at ``image_size``."""
    from detailclip_cli.core.data import AugmentConfig

    aug = AugmentConfig.for_image_size(image_size)
    if str(data) == "demo":
        # Digits are chiral: a mirrored demo view would not show the digit its caption names.
        aug = dataclasses.replace(aug, hflip=0.0)
    return aug


def train(model_cfg: ModelConfig, cfg: TrainConfig, *, data: str | Path = "demo", out_dir: Path,
          device: str = "auto", resume: bool = False, settings: dict[str, Any] | None = None,
          init: DetailCLIP | None = None, lock_text: bool = False) -> TrainingRun:
    """Pretrain DetailCLIP: set the run up now, and return an iterator of its steps.

    The returned iterator yields a :class:`StepInfo` every ``cfg.log_every`` steps. Bad data,
    configs or resume folders raise here, before any step runs.

    Args:
        model_cfg: the model to build.
        cfg: the training settings.
        data: a data spec for :func:`read_samples` (``"demo"``, a folder, a CSV/TSV file).
        out_dir: the run folder (created).
        device: ``auto``, ``cpu`` or ``cuda``.
        resume: continue the run in ``out_dir`` from its last checkpoint.
        settings: extra settings to record in ``run.json``.
        init: a model whose towers, image projection and logit scale the student (and so the
            teacher) starts from; ``model_cfg`` must have its towers (``init_model_config``).
        lock_text: freeze the text tower (kept out of the optimiser, so it never changes).

    Raises:
        ConfigError, DataError: at the call, for unusable settings or data.
        TrainingError: while iterating, a loss became non-finite (the last good checkpoint is kept).
    """
    from detailclip_cli.core.data import TwoViewDataset, read_samples
    from detailclip_cli.core.data.shards import ShardDataset, streams_shards
    from detailclip_cli.core.store.init_weights import copy_clip_weights_, lock_text_

    model_cfg.validate()
    cfg.validate(model_cfg)
    dev = join_process_group(resolve_device(device))
    shards = streams_shards(data, samples_per_epoch=cfg.samples_per_epoch)
    samples = None if shards else read_samples(data, split="train")
    if samples is not None:
        check_batch_fits(len(samples), cfg)

    seed_everything(cfg.seed)
    model = DetailCLIP(model_cfg)
    if init is not None:
        copy_clip_weights_(model, init)  # before the objective copies the image tower into the teacher
    if lock_text:
        lock_text_(model)  # before the optimiser is built, which leaves frozen parameters out
    objective = DetailCLIPObjective(model, cfg).to(dev)
    v = model_cfg.vision
    dataset = TwoViewDataset(samples, image_size=v.image_size, mean=v.mean, std=v.std,
                             aug=train_augment(v.image_size, data), tokenize=model.tokenize, seed=cfg.seed)
    if shards:  # the views above make the items of the images the shards stream
        dataset = ShardDataset(data, views=dataset, seed=cfg.seed, samples_per_epoch=cfg.samples_per_epoch)
        check_batch_fits(len(dataset), cfg)

    def metrics(step: int) -> dict[str, float]:
        return {"logit_scale": model.scale().item(), "teacher_temp_patch": objective.teacher_temp_patch(step)}

    return fit(objective, dataset, cfg=cfg, data=data, out_dir=out_dir, device=dev, resume=resume,
               settings=settings, metrics=metrics)
