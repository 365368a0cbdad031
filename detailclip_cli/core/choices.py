"""Every fixed choice of a setting or an option, defined once.

Each choice is a ``StrEnum``: a member equals its plain string (``Removal.random == "random"``),
so configs keep plain strings and their JSON files stay as they were, while config validation,
the command-line options and the generated option docs all read the members from here. A new
choice (a removal strategy, a precision) is one line in this file, and every message and help
text that lists the choices follows.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum


class Removal(StrEnum):
    """Which patch tokens the student loses before its encoder (``TrainConfig.removal``)."""

    attention = "attention"  # the teacher's [CLS] attention keeps the most-attended patches
    random = "random"  # seeded random scores
    none = "none"  # every token kept: no removal, no reconstruction target


# The removal a probe of a trained model can show (``reconstruct``): with ``none`` nothing is
# removed, so nothing is left to reconstruct.
PROBE_REMOVALS = (Removal.attention, Removal.random)


class ScoreLayer(StrEnum):
    """Which [CLS] attention scores the tokens; a block index (``-1`` = the last) is allowed too."""

    mean = "mean"  # averaged over all blocks (the authors' choice)
    last = "last"


class DistillMethod(StrEnum):
    """The image-only objective of ``distill`` without a teacher (``--method``)."""

    ibot = "ibot"  # DetailCLIP's image half: iBOT [CLS] and patch self-distillation, removal, reconstruction
    dino = "dino"  # [CLS] self-distillation only, multi-crop (centring + sharpening against collapse)
    byol = "byol"  # online predictor against an EMA target, cosine loss, no negatives
    simclr = "simclr"  # NT-Xent with the batch's other views as negatives


class DecayPolicy(StrEnum):
    """Which parameters weight decay reaches (``TrainConfig.weight_decay_policy``); never biases,
    norms or the logit scale (tensors of fewer than 2 dimensions)."""

    all_matrices = "all_matrices"  # every tensor of 2+ dimensions, embeddings included (the authors')
    skip_embeddings = "skip_embeddings"  # also none on position embeddings, [CLS] and mask tokens


class Precision(StrEnum):
    """The autocast dtype of training (``TrainConfig.precision``)."""

    auto = "auto"  # bf16 on GPU, fp32 on CPU (where bf16 / fp16 matmuls are far slower)
    fp32 = "fp32"
    bf16 = "bf16"
    fp16 = "fp16"  # with a dynamic loss scaler


class Stem(StrEnum):
    """How the image tower embeds patches (``VisionConfig.stem``)."""

    patch = "patch"  # one linear projection per patch (ViT, CLIP)
    conv = "conv"  # stride-2 3x3 convolutions down to the patch grid (Xiao et al. 2021)


class Activation(StrEnum):
    """The MLP activation of a tower (``VisionConfig.act``, ``TextConfig.act``)."""

    gelu = "gelu"
    quick_gelu = "quick_gelu"  # OpenAI CLIP's weights were trained with it


class EvalTask(StrEnum):
    """What ``evaluate`` measures."""

    zeroshot = "zeroshot"
    retrieval = "retrieval"
    dense = "dense"
    probe = "probe"
    all = "all"  # every task above


# The tasks ``all`` stands for, in the order they run and report.
EVAL_TASKS = tuple(t for t in EvalTask if t is not EvalTask.all)


class ExportFormat(StrEnum):
    """The peer library an export is written for."""

    open_clip = "open_clip"  # image + text towers
    timm = "timm"  # the image tower as a VisionTransformer


class ExportWeights(StrEnum):
    """Which weights of a run an export takes."""

    student = "student"
    teacher = "teacher"  # the EMA teacher of a run folder


class EmbedWhich(StrEnum):
    """What ``embed`` writes for each input (``--which``)."""

    image = "image"  # (E,) L2-normalised image embedding
    text = "text"  # (E,) L2-normalised text embedding
    patch = "patch"  # (L, D) the image tower's patch tokens, for dense work


class LogTarget(StrEnum):
    """Where a run's figures also go (``--log-to``); each needs the package of its name (an extra)."""

    tensorboard = "tensorboard"  # event files in RUN/tensorboard/
    wandb = "wandb"  # a Weights & Biases run (offline: RUN/wandb/)


def one_of(choices: Iterable[str]) -> str:
    """The choices as a message lists them: ``attention, random or none``."""
    names = [str(c) for c in choices]
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"


def is_score_layer(value: object) -> bool:
    """Whether ``value`` names a score layer: a :class:`ScoreLayer` or a block index (``3``, ``-1``)."""
    return value in tuple(ScoreLayer) or str(value).lstrip("-").isdigit()
