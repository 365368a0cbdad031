"""The stages objectives are built from: they share a stage by calling it, never by copying it.

- :func:`teacher_pass`: a teacher's tokens of the full views, and its [CLS]-to-patch scores
  when they choose the kept tokens.
- :func:`remove` and :func:`encode_student`: the configured token removal, then the student
  encoder on the kept tokens; :func:`encode_locals` encodes whole local crops.
- :func:`reconstruct`: the decoder and its pixel loss.
- :func:`ibot_losses`: the distillation heads and the iBOT [CLS] and patch losses.
- :func:`ema_teacher_parts`, :func:`teacher_momentum`, :func:`teacher_temp_patch`: the EMA
  teacher with the iBOT losses that hold its centres, and its schedules.
- :func:`prepare_student`: the settings checked against the student, gradient checkpointing set.

Each stage an objective runs is marked with :func:`stage`: a ``torch.profiler`` range
``detailclip/<name>``, so any profiler names the objective's own stages, and, under
:func:`observe_stages`, a call when it ends (``bench`` synchronises the device and reads a
stopwatch there, timing the objective's real forward stage by stage). The names are
:data:`STAGES`.

Shape letters: B batch, V views (2), N local crops, L patch tokens, K kept tokens, D width,
C prototypes, P patch size.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import torch
from torch import nn

from detailclip_cli.core.choices import Stem
from detailclip_cli.core.config import TrainConfig
from detailclip_cli.core.distributed import BatchShard
from detailclip_cli.core.method.losses import ClsDistillLoss, PatchDistillLoss, patchify, reconstruction_loss
from detailclip_cli.core.method.teacher import cosine_schedule, make_teacher
from detailclip_cli.core.model.detailclip import DetailCLIP
from detailclip_cli.core.model.removal import Removal, random_scores, remove_tokens

NUM_VIEWS = 2

# The marked stages, in the order a DetailCLIP step first enters them.
STAGES = ("teacher", "student_encoder", "text_tower", "decoder", "heads_losses")
PROFILER_PREFIX = "detailclip/"

_stage_observer: ContextVar[Callable[[str], None] | None] = ContextVar("stage_observer", default=None)


@contextmanager
def stage(name: str) -> Iterator[None]:
    """Mark one stage of an objective: a profiler range ``detailclip/<name>``, then the observer's call."""
    with torch.profiler.record_function(PROFILER_PREFIX + name):
        yield
    observer = _stage_observer.get()
    if observer is not None:
        observer(name)


@contextmanager
def observe_stages(observer: Callable[[str], None]) -> Iterator[None]:
    """Call ``observer(name)`` at the end of every :func:`stage` run inside (this thread only)."""
    token = _stage_observer.set(observer)
    try:
        yield
    finally:
        _stage_observer.reset(token)


def prepare_student(model: DetailCLIP, cfg: TrainConfig) -> None:
    """Check the settings against the model, freeze the patch embedding and switch gradient
    checkpointing as they say. Called before the teacher is copied and the optimiser built, so a
    frozen part stays out of the optimiser and the teacher's copy of it stays equal."""
    cfg.validate(model.cfg)
    if cfg.freeze_patch_embed and model.cfg.vision.stem == Stem.patch:
        model.visual.patch_embed.requires_grad_(False)
    model.visual.set_grad_checkpointing(cfg.grad_checkpointing)
    model.text.set_grad_checkpointing(cfg.grad_checkpointing)


# -- the teacher -----------------------------------------------------------------------------------


def ema_teacher_parts(model: DetailCLIP, cfg: TrainConfig, *, needed: bool) -> tuple[
        nn.Module | None, ClsDistillLoss | None, PatchDistillLoss | None]:
    """An EMA teacher of the student's image tower (when ``needed``) and, with a distillation
    head, the iBOT losses that hold the centres.

    Returns:
        (teacher or None, cls_loss or None, patch_loss or None).
    """
    teacher = make_teacher(model.image_tower()) if needed else None
    if model.head is None:
        return teacher, None, None
    out_dim = model.cfg.head.out_dim
    return teacher, ClsDistillLoss(out_dim, cfg.center_momentum), PatchDistillLoss(out_dim, cfg.center_momentum)


def teacher_momentum(cfg: TrainConfig, step: int) -> float:
    """The EMA momentum at ``step``: a half-cosine from ``momentum_base`` to ``momentum_final``."""
    return cosine_schedule(step, cfg.steps, cfg.momentum_base, cfg.momentum_final)


def teacher_temp_patch(cfg: TrainConfig, step: int) -> float:
    """The patch teacher temperature at ``step``: ``teacher_temp_patch_warmup`` during the first
    ``teacher_temp_warmup_steps`` steps (one epoch by default), ``teacher_temp_patch`` after.

    A step, not iBOT's linear ramp: the authors' one-epoch warm-up is a per-epoch linspace of
    length 1, so the first epoch runs at its start value and every later one at its end.
    """
    return cfg.teacher_temp_patch_warmup if step < (cfg.teacher_temp_warmup_steps or 0) else cfg.teacher_temp_patch


@torch.no_grad()
def teacher_pass(teacher: nn.Module | None, cfg: TrainConfig, images: torch.Tensor):
    """A teacher's tokens and [CLS]-to-patch scores of the full views (stage ``teacher``).

    Args:
        teacher: a module with a ``visual`` tower, or None.
        cfg: the removal strategy and score layer.
        images: (VB, 3, H, W).

    Returns:
        tokens (VB, 1 + L, D) or None without a teacher; scores (VB, L) or None unless
        removal is attention-guided.
    """
    if teacher is None:
        return None, None
    with stage("teacher"):
        if cfg.removal == "attention":
            return teacher.visual.forward_with_scores(images, cfg.score_layer)
        return teacher.visual(images), None


# -- the student -----------------------------------------------------------------------------------


def remove(model: DetailCLIP, cfg: TrainConfig, patches: torch.Tensor, scores: torch.Tensor | None,
           step: int, shard: BatchShard | None = None) -> Removal:
    """Apply the configured removal strategy to (VB, L, D) position-embedded patch tokens.

    ``scores`` (VB, L) rank the tokens for attention-guided removal. ``shard`` places the batch
    in its step's global batch: random scores are drawn for every global row and this batch's
    rows taken, so they do not depend on how the step is split.
    """
    n, length = patches.shape[:2]
    grid = model.visual.grid_size
    if cfg.removal == "none" or cfg.keep_ratio >= 1.0:
        scores, keep_ratio, block = torch.zeros(n, length, device=patches.device), 1.0, 1
    else:
        keep_ratio, block = cfg.keep_ratio, cfg.block_size
        if cfg.removal == "random":
            # Seeded by (seed, step) so a resumed run removes exactly the same tokens.
            g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
            if shard is None:
                scores = random_scores(n, length, generator=g, device=patches.device)
            else:
                everyone = random_scores(NUM_VIEWS * shard.global_size, length, generator=g)
                everyone = everyone.view(NUM_VIEWS, shard.global_size, length)  # (V * G, L) -> (V, G, L)
                scores = shard.rows(everyone, n // NUM_VIEWS).to(patches.device)  # (VB, L)
    return remove_tokens(patches, scores, keep_ratio, grid=grid, block_size=block)


def encode_student(model: DetailCLIP, cfg: TrainConfig, images: torch.Tensor, scores: torch.Tensor | None,
                   step: int, shard: BatchShard | None = None) -> tuple[torch.Tensor, Removal]:
    """Token removal and the student encoder (stage ``student_encoder``).

    Args:
        images: (VB, 3, H, W).
        scores: (VB, L) the teacher's scores for attention-guided removal, or None.

    Returns:
        latent (VB, 1 + K, D) and the removal.
    """
    with stage("student_encoder"):
        removal = remove(model, cfg, model.visual.embed_patches(images), scores, step, shard)
        latent, _ = model.visual.forward_tokens(removal.kept)
    return latent, removal


def encode_locals(model: DetailCLIP, local_views: torch.Tensor) -> torch.Tensor:
    """The student's tokens of whole local crops (stage ``student_encoder``): (B, N, 3, h, h) -> (N, B, 1 + L', D)."""
    with stage("student_encoder"):
        b, n = local_views.shape[:2]
        flat = local_views.transpose(0, 1).reshape(n * b, *local_views.shape[2:])  # (B, N, ..) -> (NB, ..)
        visual = model.visual
        latent, _ = visual.forward_tokens(visual.embed_patches(flat, interpolate_pos=True))  # (NB, 1 + L', D)
    return latent.reshape(n, b, *latent.shape[1:])


def reconstruct(model: DetailCLIP, cfg: TrainConfig, images: torch.Tensor, latent: torch.Tensor,
                removal: Removal) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
    """The decoder (stage ``decoder``) and its pixel loss (stage ``heads_losses``).

    Args:
        images: (VB, 3, H, W) the views the student encoded.
        latent: (VB, 1 + K, D) the student's tokens of the kept patches.
        removal: the removal that produced them.

    Returns:
        ``{"rec": loss}`` (empty without a decoder) and the decoder's features (VB, 1 + L, D)
        on the full grid, or None when there is no decoder or it has no feature output.
    """
    if model.decoder is None:
        return {}, None
    with stage("decoder"):
        pred, features = model.decoder(latent, removal.ids_restore)  # (VB, L, P*P*3)
    with stage("heads_losses"):
        target = patchify(images, model.visual.patch_size)
        loss = reconstruction_loss(pred, target, removal.mask, cfg.norm_pix_loss)
    return {"rec": loss}, features


# -- the distillation heads ------------------------------------------------------------------------


def ibot_losses(*, student_head: nn.Module, teacher_head: nn.Module, cls_loss: ClsDistillLoss,
                patch_loss: PatchDistillLoss, student_tokens: torch.Tensor, student_cls: torch.Tensor,
                teacher_tokens: torch.Tensor, removal: Removal, cfg: TrainConfig,
                teacher_temp_patch: float) -> dict[str, torch.Tensor]:
    """The heads and the iBOT [CLS] (across views) and patch (same view) losses (stage ``heads_losses``).

    Args:
        student_head, teacher_head: the student's distillation head and the teacher's copy.
        cls_loss, patch_loss: the losses holding the centres (moved by this call).
        student_tokens: (VB, 1 + L, D) decoder features on the full grid, or (VB, 1 + K, D)
            encoder tokens when there is no decoder; their patch rows feed the patch loss.
        student_cls: (VB, D) the *encoder's* [CLS] token, which the [CLS] loss reads (as the
            authors do: the token CLIP uses is the one distilled, and no [CLS] gradient reaches
            the decoder).
        teacher_tokens: (VB, 1 + L, D) teacher tokens of the full views.
        removal: the removal that produced the student's input.
        cfg: the temperatures.
        teacher_temp_patch: the patch teacher temperature of this step (it warms up).

    Returns:
        ``{"cls": ..., "patch": ...}``.
    """
    with stage("heads_losses"):
        teacher_out = teacher_head(teacher_tokens)  # (VB, 1 + L, C)
        vb, full = teacher_out.shape[0], student_tokens.shape[1] == teacher_out.shape[1]
        if full and removal.mask.any():
            # Decoder features on the full grid, of which only the removed positions count: run
            # the student head (a per-token MLP into out_dim logits, the costliest layer after
            # the towers) on [CLS] and those alone. Every sample removes the same number.
            positions = removal.mask.nonzero()[:, 1].view(vb, -1)  # (VB, L - K), ascending
        elif full:
            positions = None  # nothing was removed: every position counts
        else:
            positions = removal.ids_keep  # no decoder: the student has the kept positions only
        t_patch = teacher_out[:, 1:]
        if positions is not None:
            if full:
                rows = (positions + 1).unsqueeze(-1).expand(-1, -1, student_tokens.shape[-1])  # (VB, M, D)
                student_patches = torch.gather(student_tokens, 1, rows)  # (VB, M, D)
            else:
                student_patches = student_tokens[:, 1:]  # (VB, K, D), the kept positions in order
            ids = positions.unsqueeze(-1).expand(-1, -1, t_patch.shape[-1])
            t_patch = torch.gather(t_patch, 1, ids)  # (VB, L, C) -> (VB, M, C)
        else:
            student_patches = student_tokens[:, 1:]  # (VB, L, D)
        # The encoder's [CLS] in row 0, the decoder's (or encoder's) patch tokens after it: one head call.
        student_out = student_head(torch.cat([student_cls.unsqueeze(1), student_patches], dim=1))  # (VB, 1 + M, C)
        # Every compared position counts: the removed ones with a decoder, the kept ones without.
        mask = torch.ones(t_patch.shape[:2], dtype=torch.bool, device=t_patch.device)
        shape = (NUM_VIEWS, vb // NUM_VIEWS, -1)
        return {
            "cls": cls_loss(
                teacher_out=teacher_out[:, 0].reshape(shape), student_out=student_out[:, 0].reshape(shape),
                teacher_temp=cfg.teacher_temp_cls, student_temp=cfg.student_temp,
            ),
            "patch": patch_loss(
                teacher_out=t_patch, student_out=student_out[:, 1:], mask=mask,
                teacher_temp=teacher_temp_patch, student_temp=cfg.student_temp,
                center_with=teacher_out[:, 1:],
            ),
        }
