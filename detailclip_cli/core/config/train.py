"""The training config: :class:`TrainConfig`, the objective's and the loop's settings.

It round-trips through plain JSON (``to_dict`` / ``from_dict``) like the model's config, so a
run folder's ``run.json`` records the settings a run was started with.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from detailclip_cli.core.choices import (
    DecayPolicy,
    Precision,
    Removal,
    ScoreLayer,
    is_score_layer,
)
from detailclip_cli.core.config.model import ModelConfig
from detailclip_cli.core.config.schema import (
    ConfigError,
    at_least,
    build,
    check_choice,
    check_seed,
    check_types,
    fraction,
    positive,
    split_version,
    to_document,
)

# The lengths whose None means one epoch of the run's data (TrainConfig.with_epoch_length).
EPOCH_LENGTHS = ("warmup_steps", "teacher_temp_warmup_steps")

# Version 1 documents (detailclip 0.2 and earlier) were written before these settings existed or
# before their defaults became the authors'. A key missing from one takes the value that does what
# version 1 did, so an old run resumes with its own recipe (and its optimiser state still fits its
# parameter groups).
_V1_DEFAULTS: dict[str, Any] = {
    "freeze_patch_embed": False, "warmup_start_lr": None, "min_lr": 0.0,
    "weight_decay_policy": DecayPolicy.skip_embeddings.value,
    "hflip": 0.5, "blur": (1.0, 0.1), "solarize": (0.0, 0.2),
}


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
        return to_document(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        version, data = split_version(data)
        if version < 2:
            # Version 1 ramped the patch temperature linearly over a fraction of training; the
            # same length as a step is the nearest version 2 has.
            frac = data.pop("teacher_temp_warmup_frac", 0.3)
            data.setdefault("teacher_temp_warmup_steps", int(frac * data.get("steps", cls.steps)))
            data = {**_V1_DEFAULTS, **data}
        return build(cls, data, "train")

    def epoch_lengths_unset(self) -> list[str]:
        """The lengths left at ``None``, which :meth:`with_epoch_length` sets to one epoch."""
        return [name for name in EPOCH_LENGTHS if getattr(self, name) is None]

    def with_epoch_length(self, steps_per_epoch: int) -> TrainConfig:
        """A copy with every length left at ``None`` set to ``steps_per_epoch`` steps (one epoch)."""
        return dataclasses.replace(self, **{name: steps_per_epoch for name in self.epoch_lengths_unset()})

    def _values(self, *names: str) -> list[tuple[str, Any]]:
        """(name, value) of the fields ``names``, those set to None left out, for the range checks."""
        return [(name, getattr(self, name)) for name in names if getattr(self, name) is not None]

    def validate(self, model: ModelConfig | None = None) -> None:
        """Check every value's type and range (and, given the ``model``, that they fit it).

        Raises:
            ConfigError: naming the first value that cannot be used and what is allowed.
        """
        check_types(self, "train")
        check_seed(self.seed)
        check_choice("removal", self.removal, Removal)
        if not 0.0 < self.keep_ratio <= 1.0:
            raise ConfigError(f"keep_ratio must be in (0, 1], got {self.keep_ratio}")
        at_least(1, self._values("block_size"))
        if self.batch_size < 2:
            # The CLIP and NT-Xent losses compare the images of a batch; one image has nothing to compare.
            raise ConfigError(f"batch_size must be at least 2 (the losses compare the images of a batch), "
                              f"got {self.batch_size}")
        at_least(1, self._values("accum_steps"))
        if self.batch_size % self.accum_steps:
            raise ConfigError(f"batch_size {self.batch_size} does not split into {self.accum_steps} equal micro-batches")
        at_least(1, self._values("steps"))
        check_choice("precision", self.precision, Precision)
        at_least(0, self._values("samples_per_epoch"))
        fraction(self._values("max_bad_fraction"))
        positive(self._values("lr", "ssl_temp", "student_temp", "teacher_temp_cls", "teacher_temp_patch",
                              "teacher_temp_patch_warmup"))
        # warmup_start_lr may be None (version 1's ramp), which _values leaves out
        at_least(0, self._values("w_clip", "w_rec", "w_patch", "w_cls", "weight_decay", "min_lr", "grad_clip",
                                 "workers", "warmup_start_lr"))
        fraction(self._values("momentum_base", "momentum_final", "center_momentum"))
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ConfigError(f"betas must be two values in [0, 1), got {list(self.betas)}")
        at_least(1, self._values("log_every", "save_every"))
        if min(self.ssl_mlp_dim, self.ssl_emb_dim) < 1:
            raise ConfigError(f"ssl_mlp_dim and ssl_emb_dim must be at least 1, got {self.ssl_mlp_dim}, {self.ssl_emb_dim}")
        at_least(0, self._values(*EPOCH_LENGTHS))  # None (one epoch) is left out
        check_choice("weight_decay_policy", self.weight_decay_policy, DecayPolicy)
        at_least(0, self._values("color_jitter"))
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
                raise ConfigError(f"block_size {self.block_size} does not divide the {gh}x{gw} patch grid")
