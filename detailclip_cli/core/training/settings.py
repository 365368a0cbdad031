"""The configs of a training run: a new one (preset or config file, recipe, then overrides,
epochs to steps) or a resumed one (its recorded settings, with the few changes a resume allows).

A new run's settings, lowest first: the preset, the recipe (``core/recipes``), the config
file's own values, the explicit overrides.

Both training entry points (pretrain, distill) and their commands start here, and so can a notebook::

    given = overrides(steps=600, keep_ratio=0.25)
    model_cfg, train_cfg = new_configs("tiny", None, given, epochs=None, count_samples=lambda: 0, recipe="flip")
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import Any

from detailclip_cli.core.choices import Removal
from detailclip_cli.core.config import (
    ConfigError,
    ModelConfig,
    TrainConfig,
    configs_from_dict,
    load_config_file,
)
from detailclip_cli.core.data import open_source
from detailclip_cli.core.model.removal import num_kept
from detailclip_cli.core.recipes import load_recipe
from detailclip_cli.core.store.run import RunFolder

# What may change when a run is resumed (besides the device and the number of processes).
RESUME_OVERRIDES = frozenset({"steps", "workers", "log_every", "save_every", "max_bad_fraction", "compile",
                              "precision", "accum_steps", "grad_checkpointing"})

_TRAIN_FIELDS = frozenset(f.name for f in dataclasses.fields(TrainConfig))


def overrides(**values: Any) -> dict[str, Any]:
    """The ``TrainConfig`` fields a caller set, each keyword a field name; ``None`` means not set.

    A choice given as an enum member is stored as its plain string, as a config file holds it.

    Raises:
        TypeError: a keyword that is no ``TrainConfig`` field (a slip in the caller, not in its input).
    """
    unknown = sorted(set(values) - _TRAIN_FIELDS)
    if unknown:
        raise TypeError(f"not TrainConfig fields: {', '.join(unknown)}")
    return {k: v.value if isinstance(v, Enum) else v for k, v in values.items() if v is not None}


def epoch_samples(data: str, *, samples_per_epoch: int | None = None, images_only: bool = False) -> int:
    """Samples in one epoch of ``data``, for ``epochs``: of tar shards (or ``samples_per_epoch``),
    else what the reader finds (all images, with or without captions, when ``images_only``)."""
    return len(open_source(data, split="train", images_only=images_only, samples_per_epoch=samples_per_epoch or 0))


def new_configs(preset: str | None, config: Path | None, given: dict[str, Any], *, epochs: float | None,
                count_samples: Callable[[], int], preset_option: str = "--preset",
                recipe: str | None = None) -> tuple[ModelConfig, TrainConfig]:
    """The model and training configs of a new run: a preset or config file, the recipe, then the overrides.

    Args:
        preset: preset name (default tiny).
        config: a JSON config file (exclusive with ``preset``); its values override the recipe's.
        given: overrides from :func:`overrides`.
        epochs: training length in passes over the data, turned into steps (exclusive with a
            ``steps`` override).
        count_samples: how many training samples the data has (called once, only for
            ``epochs``), e.g. ``lambda: epoch_samples(data)``.
        preset_option: the option that names the preset, for messages.
        recipe: a recipe name (:data:`~detailclip_cli.core.recipes.RECIPES`), laid over the
            preset; None lays none (the preset's method as it is).

    Raises:
        ConfigError: an unusable preset, config file, recipe or override.
    """
    overlay = load_recipe(recipe).overlay() if recipe is not None else None
    if config is not None:
        if preset is not None:
            raise ConfigError(f"give either {preset_option} or --config (a config file may name its preset)")
        model_cfg, train_cfg = load_config_file(config, recipe=overlay)
    else:
        # An empty name is a mistake, not the default: load_preset refuses it, naming the presets.
        model_cfg, train_cfg = configs_from_dict({"preset": "tiny" if preset is None else preset}, recipe=overlay)
    if epochs is not None and not (math.isfinite(epochs) and epochs > 0):
        raise ConfigError(f"epochs must be a positive number, got {epochs}")
    batch_size = given.get("batch_size", train_cfg.batch_size)
    # The data is counted once, if needed; a batch below 1 is refused by validation, with its message.
    steps_per_epoch = functools.cache(lambda: count_samples() // max(1, batch_size))
    if epochs is not None:
        if "steps" in given:
            raise ConfigError("give --steps or --epochs, not both")
        given = {**given, "steps": max(1, round(epochs * steps_per_epoch()))}
    train_cfg = TrainConfig.from_dict({**train_cfg.to_dict(), **given})
    # Lengths left at None (one epoch of the data: the authors' warm-ups) are fixed where the
    # data is read anyway, by ``trainset.prepare``, so it is not read twice; run.json records
    # the steps it fixed, so a resumed run keeps them. The count made for ``epochs`` serves too.
    if epochs is not None and train_cfg.epoch_lengths_unset():
        train_cfg = train_cfg.with_epoch_length(steps_per_epoch())
    return model_cfg, train_cfg


def resume_configs(resume: Path, given: dict[str, Any], *,
                   other_options: bool) -> tuple[ModelConfig, TrainConfig, dict[str, Any]]:
    """The configs and settings of the run to resume, with the few allowed overrides applied.

    Args:
        resume: the run folder.
        given: overrides from :func:`overrides`; only :data:`RESUME_OVERRIDES` may be among them.
        other_options: whether options that fix a run's settings (preset, config, switches,
            --epochs ...) were given too, which is an error.

    Returns:
        (model config, training config, the settings recorded in ``run.json``).
    """
    if set(given) - RESUME_OVERRIDES or other_options:
        raise ConfigError("--resume continues a run with its own settings; only --steps, --workers, "
                          "--device, --log-every, --save-every, --max-bad-fraction, --compile, --precision, "
                          "--accum-steps and --grad-checkpointing may be given with it")
    model_cfg, train_cfg, settings = RunFolder(resume).settings()
    return model_cfg, TrainConfig.from_dict({**train_cfg.to_dict(), **given}), settings


def check_run(model_cfg: ModelConfig, train_cfg: TrainConfig, given: dict[str, Any] | None = None, *,
              init: str | None = None, lock_text: bool = False) -> list[str]:
    """Every check of a run's settings, in one place, before any work: each value's type and
    range, the training settings against the model, and the combinations that cannot mean
    what was asked.

    Args:
        model_cfg: the model to train (after switches such as ``--no-distill``).
        train_cfg: the training settings.
        given: the overrides the caller set (:func:`overrides`); a loss weight among them for a
            part the model lacks is warned about (the weight would do nothing).
        init: the ``--init`` model, if any.
        lock_text: freeze the text tower (needs ``init``: a random text tower, frozen, never learns).

    Returns:
        Warnings for people, one line each (empty when all is well).

    Raises:
        ConfigError: the first setting that cannot be used.
    """
    model_cfg.validate()
    train_cfg.validate(model_cfg)
    if lock_text and init is None:
        raise ConfigError("--lock-text freezes the text tower --init gave; without --init it would stay random "
                          "(give --init MODEL, or leave --lock-text out)")
    given = given or {}
    warnings = []
    unused = {"w_patch": model_cfg.head, "w_cls": model_cfg.head, "w_rec": model_cfg.decoder}
    for name, part in unused.items():
        if part is None and given.get(name):
            what = "distillation head" if name != "w_rec" else "pixel decoder"
            warnings.append(f"--{name.replace('_', '-')} {given[name]} does nothing: this run has no {what}")
    if train_cfg.removal != Removal.none:
        cells = model_cfg.vision.num_patches
        if num_kept(cells, train_cfg.keep_ratio, train_cfg.block_size) >= cells:
            gh, gw = model_cfg.vision.grid_size
            warnings.append(
                f"removal {train_cfg.removal} at keep ratio {train_cfg.keep_ratio:g} with block size "
                f"{train_cfg.block_size} removes nothing on the {gh}x{gw} patch grid (a smaller keep ratio or "
                "block size removes some; --removal none says so)")
    return warnings
