"""Configuration dataclasses, their JSON form, and the preset factory.

A model is fully described by a :class:`ModelConfig`; a training run by a :class:`TrainConfig`.
Both round-trip through plain JSON (``to_dict`` / ``from_dict``) so a saved model folder can be
rebuilt without the code that trained it, and presets are JSON files in ``core/presets``.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from detailclip_cli.core.choices import (
    Activation,
    DecayPolicy,
    Precision,
    Removal,
    ScoreLayer,
    Stem,
    is_score_layer,
    one_of,
)
from detailclip_cli.errors import UsageError

# Version 2 (detailclip 0.2) added the authors' recipe settings; see _V1_DEFAULTS.
CONFIG_VERSION = 2

# Pixel statistics, kept in the config (never hard-coded in the model or data code). New models
# use ImageNet's, as the DetailCLIP authors do; a saved model keeps the ones it was trained with
# (OpenAI CLIP's for every model saved before version 2, and for OpenAI weights).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
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
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
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
    # An Activation: quick_gelu for OpenAI CLIP weights and in the authors' recipe (the paper
    # preset); GELU by default because open_clip has one activation for both towers, so only a
    # model whose towers agree exports to open_clip (docs/authors-recipe.md).
    act: str = Activation.gelu.value


@dataclass(kw_only=True)
class DecoderConfig:
    """The MAE-style pixel decoder. As wide as the image tower (the authors' shape), the
    distillation head reads its tokens directly; a narrower one maps them back to the tower's
    width through a linear bridge."""

    width: int = 768
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
        version = data.pop("version", CONFIG_VERSION)
        _check_version(version)
        sub = {"vision": VisionConfig, "text": TextConfig, "decoder": DecoderConfig, "head": HeadConfig}
        kwargs: dict[str, Any] = {}
        for key, value in data.items():
            if key in sub:
                if value is not None and version < 2:
                    value = {**_V1_DEFAULTS.get(key, {}), **value}
                kwargs[key] = None if value is None else _build(sub[key], value, f"model.{key}")
            else:
                kwargs[key] = value
        return _build(cls, kwargs, "model")

    def validate(self) -> None:
        """Check every value's type and range, then how they fit together.

        Raises:
            ConfigError: naming the first value that cannot be used.
        """
        v = self.vision
        parts = [("model", self), ("vision", v), ("text", self.text),
                 *([("decoder", self.decoder)] if self.decoder else []), *([("head", self.head)] if self.head else [])]
        for where, part in parts:
            check_types(part, where)
            for f in dataclasses.fields(part):
                value = getattr(part, f.name)
                if f.type == "int" and value < 1:
                    raise ConfigError(f"{where} {f.name} must be at least 1, got {value}")
        for name, value in [("vision mlp_ratio", v.mlp_ratio), ("vision norm_eps", v.norm_eps),
                            *([("decoder mlp_ratio", self.decoder.mlp_ratio)] if self.decoder else []),
                            ("max_logit_scale", self.max_logit_scale)]:
            if value <= 0:
                raise ConfigError(f"{name} must be positive, got {value}")
        if len(v.mean) != 3 or len(v.std) != 3:
            raise ConfigError(f"vision mean and std need 3 values each (R, G, B), got {list(v.mean)}, {list(v.std)}")
        if min(v.std) <= 0:
            raise ConfigError(f"vision std must be positive (images are divided by it), got {list(v.std)}")
        if v.patch_size > v.image_size:
            raise ConfigError(f"patch_size {v.patch_size} is larger than image_size {v.image_size}")
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
    """The objective's and the loop's settings: the DetailCLIP authors' recipe unless a preset says
    otherwise (docs/authors-recipe.md compares the two, setting by setting).

    Two lengths may be one epoch of the run's data (``None``): ``warmup_steps`` (the ``paper``
    preset's) and ``teacher_temp_warmup_steps`` (the default). :meth:`with_epoch_length` fixes them
    when a run is set up (``core.training.settings.new_configs``, which knows the data), so
    ``run.json`` records steps; a config used without that step counts a ``None`` length as 0.
    """

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
    # The patch teacher temperature is teacher_temp_patch_warmup for the first
    # teacher_temp_warmup_steps steps, then teacher_temp_patch: a step, as the authors' one-epoch
    # warm-up (iBOT ramps linearly instead). None = one epoch of the run's data.
    teacher_temp_patch: float = 0.07
    teacher_temp_patch_warmup: float = 0.04
    teacher_temp_warmup_steps: int | None = None
    center_momentum: float = 0.9
    # The patch embedding stays at its random initialisation (MoCo v3's stabiliser, the authors'
    # choice): no gradient, no optimiser update, and the teacher's copy stays equal. Only the
    # linear patch stem is frozen; a conv stem always learns (learning its filters is its point).
    freeze_patch_embed: bool = True
    # SimCLR and BYOL (distill --method simclr|byol, and SimCLR in the slip recipe): the MLPs on
    # the encoder's [CLS] (SimCLR's projection, BYOL's projector and predictor; SLIP's names and
    # sizes) and SimCLR's NT-Xent temperature
    ssl_mlp_dim: int = 4096
    ssl_emb_dim: int = 256
    ssl_temp: float = 0.1
    # pretrain: add SimCLR's NT-Xent between the two views (SLIP; ``--recipe slip``), through a
    # projection MLP of the sizes above, at temperature ssl_temp, weighed 1 like SLIP's
    simclr_term: bool = False
    # optimisation
    steps: int = 1000
    batch_size: int = 256
    lr: float = 5e-4
    # Linear warm-up over warmup_steps from warmup_start_lr to lr (None: from lr / warmup_steps,
    # version 1's ramp), then a half-cosine down to min_lr; the authors' ends are 1e-6 and 1e-5.
    warmup_start_lr: float | None = 1e-6
    min_lr: float = 1e-5
    weight_decay: float = 0.5
    # Which tensors weight decay reaches (a DecayPolicy): every tensor of 2+ dimensions, embeddings
    # included (the authors'), or those less position embeddings, [CLS] and mask tokens.
    weight_decay_policy: str = DecayPolicy.all_matrices.value
    betas: tuple[float, float] = (0.9, 0.98)
    warmup_steps: int | None = 100  # None = one epoch of the run's data
    grad_clip: float = 0.0  # 0 = off
    # the two global views (the authors': no flips; blur and solarize alike on both views)
    hflip: float = 0.0  # probability of a horizontal flip
    blur: tuple[float, float] = (0.1, 0.1)  # Gaussian-blur probability of view 1 and view 2
    solarize: tuple[float, float] = (0.2, 0.2)  # solarisation probability of view 1 and view 2
    color_jitter: float = 0.4  # colour-jitter strength (0 = off); applied with probability 0.8
    grayscale: float = 0.2  # probability of a grey view
    # area fraction range of the random resized crop; None = 0.14-1 (0.35-1 at 96 px and below);
    # (1.0, 1.0) = no cropping
    crop_scale: tuple[float, float] | None = None
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

    def __post_init__(self) -> None:
        # A config file may give a layer index as a JSON number; it is kept as the string it names.
        if isinstance(self.score_layer, int) and not isinstance(self.score_layer, bool):
            self.score_layer = str(self.score_layer)

    def to_dict(self) -> dict[str, Any]:
        return {"version": CONFIG_VERSION, **dataclasses.asdict(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        data = dict(data)
        version = data.pop("version", CONFIG_VERSION)
        _check_version(version)
        if version < 2:
            # Version 1 ramped the patch temperature linearly over a fraction of training; the
            # same length as a step is the nearest version 2 has.
            frac = data.pop("teacher_temp_warmup_frac", 0.3)
            data.setdefault("teacher_temp_warmup_steps", int(frac * data.get("steps", cls.steps)))
            data = {**_V1_DEFAULTS["train"], **data}
        return _build(cls, data, "train")

    def epoch_lengths_unset(self) -> list[str]:
        """The lengths left at ``None``, which :meth:`with_epoch_length` sets to one epoch."""
        return [name for name in EPOCH_LENGTHS if getattr(self, name) is None]

    def with_epoch_length(self, steps_per_epoch: int) -> "TrainConfig":
        """A copy with every length left at ``None`` set to ``steps_per_epoch`` steps (one epoch)."""
        return dataclasses.replace(self, **{name: steps_per_epoch for name in self.epoch_lengths_unset()})

    def validate(self, model: ModelConfig | None = None) -> None:
        """Check every value's type and range (and, given the ``model``, that they fit it).

        Raises:
            ConfigError: naming the first value that cannot be used and what is allowed.
        """
        check_types(self, "train")
        check_seed(self.seed)
        if self.removal not in tuple(Removal):
            raise ConfigError(f"removal must be {one_of(Removal)}, not {self.removal!r}")
        if not 0.0 < self.keep_ratio <= 1.0:
            raise ConfigError(f"keep_ratio must be in (0, 1], got {self.keep_ratio}")
        if self.block_size < 1:
            raise ConfigError(f"block_size must be at least 1, got {self.block_size}")
        if self.batch_size < 2:
            # The CLIP and NT-Xent losses compare the images of a batch; one image has nothing to compare.
            raise ConfigError(f"batch_size must be at least 2 (the losses compare the images of a batch), "
                              f"got {self.batch_size}")
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
        for name in ("lr", "ssl_temp", "student_temp", "teacher_temp_cls", "teacher_temp_patch",
                     "teacher_temp_patch_warmup"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("w_clip", "w_rec", "w_patch", "w_cls", "weight_decay", "min_lr", "grad_clip", "workers",
                     *(["warmup_start_lr"] if self.warmup_start_lr is not None else [])):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be at least 0, got {getattr(self, name)}")
        for name in ("momentum_base", "momentum_final", "center_momentum"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ConfigError(f"betas must be two values in [0, 1), got {list(self.betas)}")
        for name in ("log_every", "save_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.ssl_temp <= 0:
            raise ConfigError(f"ssl_temp must be positive, got {self.ssl_temp}")
        if min(self.ssl_mlp_dim, self.ssl_emb_dim) < 1:
            raise ConfigError(f"ssl_mlp_dim and ssl_emb_dim must be at least 1, got {self.ssl_mlp_dim}, {self.ssl_emb_dim}")
        for name in EPOCH_LENGTHS:
            if (getattr(self, name) or 0) < 0:
                raise ConfigError(f"{name} must be at least 0, got {getattr(self, name)}")
        if self.weight_decay_policy not in tuple(DecayPolicy):
            raise ConfigError(f"weight_decay_policy must be {one_of(DecayPolicy)}, not {self.weight_decay_policy!r}")
        if self.color_jitter < 0:
            raise ConfigError(f"color_jitter must be at least 0, got {self.color_jitter}")
        if self.crop_scale is not None and not (len(self.crop_scale) == 2
                                                and 0.0 < self.crop_scale[0] <= self.crop_scale[1] <= 1.0):
            raise ConfigError(f"crop_scale must be two area fractions 0 < low <= high <= 1, got {self.crop_scale}")
        for name in ("hflip", "blur", "solarize", "grayscale"):
            values = getattr(self, name)
            if not all(0.0 <= p <= 1.0 for p in (values if isinstance(values, tuple) else (values,))):
                raise ConfigError(f"{name} must be probabilities in [0, 1], got {values}")
        if not is_score_layer(self.score_layer):
            raise ConfigError(f"score_layer must be {', '.join(ScoreLayer)} or a layer index, not {self.score_layer!r}")
        if model is not None and self.score_layer not in tuple(ScoreLayer):
            depth = model.vision.depth
            if not -depth <= int(self.score_layer) < depth:
                raise ConfigError(f"score_layer {self.score_layer} is out of range: the image tower has {depth} "
                                  f"blocks (0 to {depth - 1}, or -{depth} to -1 from the end; or mean, last)")
        if model is not None and self.removal != Removal.none:
            gh, gw = model.vision.grid_size
            if gh % self.block_size or gw % self.block_size:
                raise ConfigError(
                    f"block_size {self.block_size} does not divide the {gh}x{gw} patch grid"
                )


# Seeds seed Python, NumPy and torch alike; NumPy takes [0, 2**32).
SEED_LIMIT = 2**32


def check_seed(seed: Any, name: str = "seed") -> int:
    """``seed`` if it is an integer in ``[0, 2**32)``; a :class:`ConfigError` naming ``name`` otherwise."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < SEED_LIMIT:
        raise ConfigError(f"{name} must be an integer in [0, 2**32), got {seed!r}")
    return seed


def check_types(obj: Any, where: str) -> None:
    """Refuse a dataclass value of the wrong JSON type (a config file may hold anything), and a
    float that is not finite (NaN or Inf), naming the field.

    The field's annotation decides: ``int`` wants an integer (not a boolean), ``float`` any
    finite number, ``bool`` a boolean, ``str`` a string, ``tuple[...]`` finite numbers,
    ``X | None`` also None. Sub-configs (other dataclasses) are checked by their own call.
    """
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        kind = f.type.replace(" | None", "")
        if value is None and f.type.endswith("| None"):
            continue
        if kind in ("int", "float", "bool", "str") or kind.startswith("tuple["):
            if not _fits(value, kind):
                raise ConfigError(f"{where} {f.name} must be {_KIND_NAMES.get(kind, 'a list of finite numbers')}, "
                                  f"got {value!r}")


_KIND_NAMES = {"int": "an integer", "float": "a finite number", "bool": "true or false", "str": "a string"}


def _fits(value: Any, kind: str) -> bool:
    def number(x: Any) -> bool:
        return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)

    if kind == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "float":
        return number(value)
    if kind == "bool":
        return isinstance(value, bool)
    if kind == "str":
        return isinstance(value, str)
    return isinstance(value, (tuple, list)) and all(number(x) for x in value)


# The lengths whose None means one epoch of the run's data (TrainConfig.with_epoch_length).
EPOCH_LENGTHS = ("warmup_steps", "teacher_temp_warmup_steps")

# Version 1 documents (detailclip 0.2 and earlier) were written before these settings existed or
# before their defaults became the authors'. A key missing from one takes the value that does what
# version 1 did, so an old model loads as it was saved and an old run resumes with its own recipe
# (and its optimiser state still fits its parameter groups).
_V1_DEFAULTS: dict[str, dict[str, Any]] = {
    "vision": {"mean": CLIP_MEAN, "std": CLIP_STD},
    "decoder": {"width": 512},
    "train": {"freeze_patch_embed": False, "warmup_start_lr": None, "min_lr": 0.0,
              "weight_decay_policy": DecayPolicy.skip_embeddings.value,
              "hflip": 0.5, "blur": (1.0, 0.1), "solarize": (0.0, 0.2)},
}


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


PRESETS = ("tiny", "small", "base", "paper")


def load_preset(name: str) -> tuple[ModelConfig, TrainConfig]:
    """Return the model and training configs of a named preset (``tiny``, ``small``, ``base``, ``paper``)."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r} (choose from {', '.join(PRESETS)})")
    text = resources.files("detailclip_cli.core.presets").joinpath(f"{name}.json").read_text()
    return configs_from_dict(json.loads(text))


def configs_from_dict(data: dict[str, Any], *,
                      recipe: dict[str, Any] | None = None) -> tuple[ModelConfig, TrainConfig]:
    """Split a ``{"model": ..., "train": ...}`` document into validated configs.

    Lowest first: the document's preset, the ``recipe`` overlay (a ``{"model": ..., "train": ...}``
    document, :meth:`Recipe.overlay <detailclip_cli.core.recipes.Recipe.overlay>`), the
    document's own values.
    """
    # "about" is a line for people (what a preset is); it sets nothing.
    unknown = sorted(set(data) - {"model", "train", "preset", "about"})
    if unknown:
        raise ConfigError(f"unknown top-level key(s): {', '.join(unknown)} (allowed: preset, model, train, about)")
    model, train = ModelConfig(), TrainConfig()
    if "preset" in data:
        model, train = load_preset(data["preset"])
    for layer in (recipe or {}, data):
        if "model" in layer:
            model = ModelConfig.from_dict(_merge(model.to_dict(), layer["model"]))
        if "train" in layer:
            train = TrainConfig.from_dict(_merge(train.to_dict(), layer["train"]))
    return model, train


def load_config_file(path: str | Path, *,
                     recipe: dict[str, Any] | None = None) -> tuple[ModelConfig, TrainConfig]:
    """Read a JSON config file (``{"preset": "tiny", "model": {...}, "train": {...}}``); ``recipe``
    as :func:`configs_from_dict` takes it."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a JSON object")
    return configs_from_dict(data, recipe=recipe)


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Recursively overlay ``override`` on ``base`` (a None sub-config switches a part off)."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out
