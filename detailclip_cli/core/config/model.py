"""The model's config: :class:`ModelConfig` and the config of each of its parts.

Everything needed to rebuild a model, in a form that round-trips through plain JSON
(``to_dict`` / ``from_dict``), so a saved model folder can be rebuilt without the code that
trained it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from detailclip_cli.core.choices import Activation, Stem
from detailclip_cli.core.config.schema import (
    ConfigError,
    at_least,
    build,
    check_choice,
    check_types,
    positive,
    split_version,
    to_document,
)

# Pixel statistics, kept in the config (never hard-coded in the model or data code). New models
# use ImageNet's, as the DetailCLIP authors do; a saved model keeps the ones it was trained with
# (OpenAI CLIP's for every model saved before version 2, and for OpenAI weights).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


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


# The sub-configs of a ModelConfig, by key.
_PARTS = {"vision": VisionConfig, "text": TextConfig, "decoder": DecoderConfig, "head": HeadConfig}

# Version 1 documents (detailclip 0.2 and earlier) were written before these settings existed or
# before their defaults became the authors'. A key missing from one takes the value that does what
# version 1 did, so an old model loads as it was saved.
_V1_DEFAULTS: dict[str, dict[str, Any]] = {
    "vision": {"mean": CLIP_MEAN, "std": CLIP_STD},
    "decoder": {"width": 512},
}


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
        return to_document(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        version, data = split_version(data)
        kwargs: dict[str, Any] = {}
        for key, value in data.items():
            if key in _PARTS:
                if value is not None and version < 2:
                    value = {**_V1_DEFAULTS.get(key, {}), **value}
                kwargs[key] = None if value is None else build(_PARTS[key], value, f"model.{key}")
            else:
                kwargs[key] = value
        return build(cls, kwargs, "model")

    def validate(self) -> None:
        """Check every value's type and range, then how they fit together.

        Raises:
            ConfigError: naming the first value that cannot be used.
        """
        v, decoder = self.vision, self.decoder
        parts = [("model", self), ("vision", v), ("text", self.text),
                 *([("decoder", decoder)] if decoder else []), *([("head", self.head)] if self.head else [])]
        for where, part in parts:
            check_types(part, where)
            at_least(1, [(f"{where} {f.name}", getattr(part, f.name))
                         for f in dataclasses.fields(part) if f.type == "int"])
        positive([("vision mlp_ratio", v.mlp_ratio), ("vision norm_eps", v.norm_eps),
                  *([("decoder mlp_ratio", decoder.mlp_ratio)] if decoder else []),
                  ("max_logit_scale", self.max_logit_scale)])
        if len(v.mean) != 3 or len(v.std) != 3:
            raise ConfigError(f"vision mean and std need 3 values each (R, G, B), got {list(v.mean)}, {list(v.std)}")
        if min(v.std) <= 0:
            raise ConfigError(f"vision std must be positive (images are divided by it), got {list(v.std)}")
        if v.patch_size > v.image_size:
            raise ConfigError(f"patch_size {v.patch_size} is larger than image_size {v.image_size}")
        if v.image_size % v.patch_size:
            raise ConfigError(f"image_size {v.image_size} is not a multiple of patch_size {v.patch_size}")
        check_choice("vision stem", v.stem, Stem)
        if v.stem == Stem.conv and (v.patch_size < 2 or v.patch_size & (v.patch_size - 1)):
            raise ConfigError(f"a conv stem needs a power-of-two patch_size, not {v.patch_size}")
        for name, width, heads in [
            ("vision", v.width, v.heads),
            ("text", self.text.width, self.text.heads),
            *([("decoder", decoder.width, decoder.heads)] if decoder else []),
        ]:
            if width % heads:
                raise ConfigError(f"{name} width {width} is not divisible by its {heads} heads")
        check_choice("vision act", v.act, Activation)
        check_choice("text act", self.text.act, Activation)
