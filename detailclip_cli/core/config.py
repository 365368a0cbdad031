"""Configuration dataclasses, their JSON form, and the preset factory.

A model is fully described by a :class:`ModelConfig`; a training run by a :class:`TrainConfig`.
Both round-trip through plain JSON (``to_dict`` / ``from_dict``) so a saved model folder can be
rebuilt without the code that trained it, and presets are JSON files in ``core/presets``.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from detailclip_cli.core.choices import (
    Activation,
    Precision,
    Removal,
    ScoreLayer,
    Stem,
    is_score_layer,
    one_of,
)
from detailclip_cli.errors import UsageError

CONFIG_VERSION = 1

# OpenAI CLIP's normalisation, kept in the config (never hard-coded in the model or data code).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class ConfigError(UsageError, ValueError):
    """A configuration value or file that cannot be used; the message is one line for people."""


@dataclass(kw_only=True)
class VisionConfig:
    """The image tower: a ViT over ``image_size / patch_size`` squared patches plus one [CLS]."""

    image_size: int = 224
    patch_size: int = 16
    width: int = 768
    depth: int = 12
    heads: int = 12
    mlp_ratio: float = 4.0
    mean: tuple[float, float, float] = CLIP_MEAN
    std: tuple[float, float, float] = CLIP_STD
    # Layout knobs so CLIP-style towers (open_clip, OpenAI) map onto this ViT exactly.
    pre_norm: bool = False  # a LayerNorm on the token sequence before the first block (CLIP's ln_pre)
    norm_eps: float = 1e-6
    act: str = Activation.gelu.value  # an Activation
    patch_bias: bool = True
    # "patch": one linear projection per patch (ViT, CLIP). "conv": a stack of stride-2 3x3
    # convolutions down to the patch grid (Xiao et al. 2021, "Early convolutions help
    # transformers see better"); it needs far less data to learn shapes, which is what a tiny
    # model trained for minutes on a CPU lacks. Each token then also sees a few pixels of its
    # neighbours (receptive field patch_size + 2 * (patch_size - 1)), before any removal.
    stem: str = Stem.patch.value  # a Stem

    @property
    def grid_size(self) -> tuple[int, int]:
        return (self.image_size // self.patch_size, self.image_size // self.patch_size)

    @property
    def num_patches(self) -> int:
        h, w = self.grid_size
        return h * w


@dataclass(kw_only=True)
class TextConfig:
    """The text tower (open_clip's causal ``TextTransformer``) and its tokenizer's context."""

    context_length: int = 77
    vocab_size: int = 49408
    width: int = 512
    heads: int = 8
    layers: int = 12
    act: str = Activation.gelu.value  # an Activation (quick_gelu for OpenAI CLIP weights)


@dataclass(kw_only=True)
class DecoderConfig:
    """The MAE-style pixel decoder."""

    width: int = 512
    depth: int = 1
    heads: int = 16
    mlp_ratio: float = 4.0


@dataclass(kw_only=True)
class HeadConfig:
    """The iBOT projection head: MLP -> L2-normalised bottleneck -> weight-normed prototypes."""

    out_dim: int = 8192
    hidden_dim: int = 2048
    bottleneck_dim: int = 256
    layers: int = 3


@dataclass(kw_only=True)
class ModelConfig:
    """Everything needed to rebuild a model. ``decoder`` / ``head`` are None when switched off."""

    embed_dim: int = 512
    vision: VisionConfig = field(default_factory=VisionConfig)
    text: TextConfig = field(default_factory=TextConfig)
    decoder: DecoderConfig | None = field(default_factory=DecoderConfig)
    head: HeadConfig | None = field(default_factory=HeadConfig)
    init_logit_scale: float = 2.6592  # log(1 / 0.07), as CLIP
    max_logit_scale: float = 100.0

    def to_dict(self) -> dict[str, Any]:
        return {"version": CONFIG_VERSION, **dataclasses.asdict(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelConfig":
        data = dict(data)
        _check_version(data.pop("version", CONFIG_VERSION))
        sub = {"vision": VisionConfig, "text": TextConfig, "decoder": DecoderConfig, "head": HeadConfig}
        kwargs: dict[str, Any] = {}
        for key, value in data.items():
            if key in sub:
                kwargs[key] = None if value is None else _build(sub[key], value, f"model.{key}")
            else:
                kwargs[key] = value
        return _build(cls, kwargs, "model")

    def validate(self) -> None:
        v = self.vision
        if v.image_size % v.patch_size:
            raise ConfigError(
                f"image_size {v.image_size} is not a multiple of patch_size {v.patch_size}"
            )
        if v.stem not in tuple(Stem):
            raise ConfigError(f"vision stem must be {one_of(Stem)}, not {v.stem!r}")
        if v.stem == Stem.conv and (v.patch_size < 2 or v.patch_size & (v.patch_size - 1)):
            raise ConfigError(f"a conv stem needs a power-of-two patch_size, not {v.patch_size}")
        for name, width, heads in [
            ("vision", v.width, v.heads),
            ("text", self.text.width, self.text.heads),
            *([("decoder", self.decoder.width, self.decoder.heads)] if self.decoder else []),
        ]:
            if width % heads:
                raise ConfigError(f"{name} width {width} is not divisible by its {heads} heads")
        for name, act in [("vision", v.act), ("text", self.text.act)]:
            if act not in tuple(Activation):
                raise ConfigError(f"{name} act must be {one_of(Activation)}, not {act!r}")


@dataclass(kw_only=True)
class TrainConfig:
    """The objective's and the loop's settings (the DetailCLIP paper's defaults unless a preset says otherwise)."""

    # token removal
    removal: str = Removal.attention.value  # a Removal
    keep_ratio: float = 0.5  # fraction of patch tokens the student KEEPS
    block_size: int = 2  # removal decides per block_size x block_size patch block
    score_layer: str = ScoreLayer.mean.value  # a ScoreLayer or a layer index: which teacher attention scores
    # loss weights
    w_clip: float = 1.0
    w_rec: float = 1.0
    w_patch: float = 1.0
    w_cls: float = 1.0
    norm_pix_loss: bool = True
    # teacher and distillation
    momentum_base: float = 0.996
    momentum_final: float = 1.0
    student_temp: float = 0.1
    teacher_temp_cls: float = 0.04
    teacher_temp_patch: float = 0.07
    teacher_temp_patch_warmup: float = 0.04
    teacher_temp_warmup_frac: float = 0.3  # fraction of training over which the patch temp warms
    center_momentum: float = 0.9
    # optimisation
    steps: int = 1000
    batch_size: int = 256
    lr: float = 5e-4
    min_lr: float = 0.0
    weight_decay: float = 0.5
    betas: tuple[float, float] = (0.9, 0.98)
    warmup_steps: int = 100
    grad_clip: float = 0.0  # 0 = off
    # batch_size is the global batch of an optimiser step; it is read as accum_steps micro-batches
    # (per process, under torchrun), with the gradient of the whole batch (core/distributed.py).
    accum_steps: int = 1
    # Recompute each tower block's activations in the backward: less memory, about 1/3 more compute.
    grad_checkpointing: bool = False
    # run
    max_bad_fraction: float = 0.05  # stop when more of the samples seen than this are unreadable
    samples_per_epoch: int = 0  # tar shards only: the length of an epoch (0 = one pass over the data)
    seed: int = 0
    workers: int = 0
    # torch.compile every transformer block (vision towers, decoder) in place: state-dict keys
    # stay the same, so checkpoints do not depend on it. Pays a compile time at the start.
    compile: bool = False
    # Autocast dtype: auto = bf16 on GPU, fp32 on CPU (where bf16/fp16 matmuls are far slower);
    # fp16 runs with a dynamic loss scaler.
    precision: str = Precision.auto.value  # a Precision
    log_every: int = 10
    save_every: int = 200

    def to_dict(self) -> dict[str, Any]:
        return {"version": CONFIG_VERSION, **dataclasses.asdict(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        data = dict(data)
        _check_version(data.pop("version", CONFIG_VERSION))
        return _build(cls, data, "train")

    def validate(self, model: ModelConfig | None = None) -> None:
        if self.removal not in tuple(Removal):
            raise ConfigError(f"removal must be {one_of(Removal)}, not {self.removal!r}")
        if not 0.0 < self.keep_ratio <= 1.0:
            raise ConfigError(f"keep_ratio must be in (0, 1], got {self.keep_ratio}")
        if self.block_size < 1:
            raise ConfigError(f"block_size must be at least 1, got {self.block_size}")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be at least 1, got {self.batch_size}")
        if self.accum_steps < 1:
            raise ConfigError(f"accum_steps must be at least 1, got {self.accum_steps}")
        if self.batch_size % self.accum_steps:
            raise ConfigError(f"batch_size {self.batch_size} does not split into {self.accum_steps} equal micro-batches")
        if self.steps < 1:
            raise ConfigError(f"steps must be at least 1, got {self.steps}")
        if self.precision not in tuple(Precision):
            raise ConfigError(f"precision must be {one_of(Precision)}, not {self.precision!r}")
        if self.samples_per_epoch < 0:
            raise ConfigError(f"samples_per_epoch must be at least 0, got {self.samples_per_epoch}")
        if not 0.0 <= self.max_bad_fraction <= 1.0:
            raise ConfigError(f"max_bad_fraction must be in [0, 1], got {self.max_bad_fraction}")
        if self.lr <= 0:
            raise ConfigError(f"lr must be positive, got {self.lr}")
        if not is_score_layer(self.score_layer):
            raise ConfigError(f"score_layer must be {', '.join(ScoreLayer)} or a layer index, not {self.score_layer!r}")
        if model is not None and self.removal != Removal.none:
            gh, gw = model.vision.grid_size
            if gh % self.block_size or gw % self.block_size:
                raise ConfigError(
                    f"block_size {self.block_size} does not divide the {gh}x{gw} patch grid"
                )


def _check_version(version: Any) -> None:
    if not isinstance(version, int) or version > CONFIG_VERSION:
        raise ConfigError(
            f"config version {version!r} is newer than this detailclip understands ({CONFIG_VERSION}); upgrade detailclip"
        )


def _build(cls, data: dict[str, Any], where: str):
    """Build a dataclass from a dict, rejecting unknown keys with a message naming them."""
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise ConfigError(f"unknown key(s) in {where}: {', '.join(unknown)} (allowed: {', '.join(names)})")
    kwargs = {}
    for key, value in data.items():
        # JSON has no tuples; restore them where the dataclass default is a tuple.
        default = names[key].default
        if isinstance(value, list) and isinstance(default, tuple):
            value = tuple(value)
        kwargs[key] = value
    return cls(**kwargs)


PRESETS = ("tiny", "small", "base")


def load_preset(name: str) -> tuple[ModelConfig, TrainConfig]:
    """Return the model and training configs of a named preset (``tiny``, ``small``, ``base``)."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r} (choose from {', '.join(PRESETS)})")
    text = resources.files("detailclip_cli.core.presets").joinpath(f"{name}.json").read_text()
    return configs_from_dict(json.loads(text))


def configs_from_dict(data: dict[str, Any]) -> tuple[ModelConfig, TrainConfig]:
    """Split a ``{"model": ..., "train": ...}`` document into validated configs."""
    unknown = sorted(set(data) - {"model", "train", "preset"})
    if unknown:
        raise ConfigError(f"unknown top-level key(s): {', '.join(unknown)} (allowed: preset, model, train)")
    model, train = ModelConfig(), TrainConfig()
    if "preset" in data:
        model, train = load_preset(data["preset"])
    if "model" in data:
        model = ModelConfig.from_dict(_merge(model.to_dict(), data["model"]))
    if "train" in data:
        train = TrainConfig.from_dict(_merge(train.to_dict(), data["train"]))
    return model, train


def load_config_file(path: str | Path) -> tuple[ModelConfig, TrainConfig]:
    """Read a JSON config file (``{"preset": "tiny", "model": {...}, "train": {...}}``)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a JSON object")
    return configs_from_dict(data)


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Recursively overlay ``override`` on ``base`` (a None sub-config switches a part off)."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out
