"""Configuration dataclasses, their JSON form, and the preset factory.

A model is fully described by a :class:`ModelConfig`; a training run by a :class:`TrainConfig`.
Both round-trip through plain JSON (``to_dict`` / ``from_dict``) so a saved model folder can be
rebuilt without the code that trained it, and presets are JSON files in ``core/presets``.

One module per concept; import the names from here:

- ``schema``: :class:`ConfigError`, the document version, and the checks every config's values
  share (types, ranges, choices, seeds);
- ``model``: :class:`ModelConfig` and its parts (vision, text, decoder, head), pixel statistics;
- ``train``: :class:`TrainConfig`;
- ``loading``: presets, config files and recipe overlays (:func:`load_preset`,
  :func:`configs_from_dict`, :func:`load_config_file`).
"""

from detailclip_cli.core.config.loading import (
    PRESETS,
    configs_from_dict,
    load_config_file,
    load_preset,
)
from detailclip_cli.core.config.model import (
    CLIP_MEAN,
    CLIP_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    DecoderConfig,
    HeadConfig,
    ModelConfig,
    TextConfig,
    VisionConfig,
)
from detailclip_cli.core.config.schema import (
    CONFIG_VERSION,
    SEED_LIMIT,
    ConfigError,
    check_seed,
    check_types,
)
from detailclip_cli.core.config.train import EPOCH_LENGTHS, TrainConfig

__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "CONFIG_VERSION",
    "EPOCH_LENGTHS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "PRESETS",
    "SEED_LIMIT",
    "ConfigError",
    "DecoderConfig",
    "HeadConfig",
    "ModelConfig",
    "TextConfig",
    "TrainConfig",
    "VisionConfig",
    "check_seed",
    "check_types",
    "configs_from_dict",
    "load_config_file",
    "load_preset",
]
