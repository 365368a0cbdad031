"""Distillation: train an image tower from a teacher, from images alone (no captions needed).

Two objectives, both trained by the loop of :mod:`detailclip_cli.core.training.loop` (:func:`fit`);
the image-only objectives DINO, BYOL and SimCLR (``distill --method``) are in
:mod:`detailclip_cli.core.method.selfsup`, on the same base:

- :class:`SelfDistillObjective` (no teacher given): DetailCLIP's image half alone. An EMA copy
  of the student chooses the kept tokens by its [CLS] attention and gives the iBOT [CLS] and
  patch targets; the decoder reconstructs the removed pixels. The text tower is not trained.
- :class:`FrozenTeacherObjective` (a trained teacher): the frozen teacher's [CLS] attention
  chooses the tokens the student keeps; the student matches the teacher's image embedding in
  the shared image-text space (cosine), the teacher's patch features at kept and removed
  positions (cosine, through learned linear bridges, as the widths may differ), and
  reconstructs pixels. The student takes over the teacher's text tower and logit scale, so the
  saved student is a complete CLIP model; the bridges stay in the training state.

Both take DINO's multi-crop: ``local_crops`` small views per image that the student sees whole
and must map to the teacher's [CLS] target of both global views.

Like the DetailCLIP objective, both are built from the shared stages of
:mod:`detailclip_cli.core.method.stages` (teacher pass, removal and student encoder, local
crops, reconstruction, and for self-distillation the iBOT heads); their loss terms live in
:mod:`detailclip_cli.core.method.losses`. Each keeps only the parts it uses.

Shape letters: B batch, V global views (2), N local crops, L patch tokens, K kept tokens,
D width (Ds student, Dt teacher), E embedding width, C prototypes, P patch size."""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from detailclip_cli.core.config import ConfigError, TrainConfig, VisionConfig
from detailclip_cli.core.distributed import BatchShard
from detailclip_cli.core.method import stages
from detailclip_cli.core.method.collapse import CollapseMonitor, embedding_spread, teacher_entropy
from detailclip_cli.core.method.losses import (cls_cosine_loss, kept_patch_cosine_loss, pooled_mean,
                                               removed_patch_cosine_loss, weighted_total)
from detailclip_cli.core.method.stages import NUM_VIEWS, stage
from detailclip_cli.core.method.teacher import ema_update_
from detailclip_cli.core.model.detailclip import DetailCLIP
from detailclip_cli.core.model.removal import Removal


def resample_grid(x: torch.Tensor, src: tuple[int, int], dst: tuple[int, int]) -> torch.Tensor:
    """Resample per-patch values from one patch grid to another (bilinear, antialiased).

    Args:
        x: (B, gh * gw, C) values in row-major grid order.
        src: (gh, gw) grid of ``x``.
        dst: (gh', gw') wanted grid.

    Returns:
        (B, gh' * gw', C); ``x`` itself when the grids are equal.
    """
    if tuple(src) == tuple(dst):
        return x
    b, _, c = x.shape
    image = x.transpose(1, 2).reshape(b, c, *src)  # (B, L, C) -> (B, C, gh, gw)
    image = F.interpolate(image.float(), size=tuple(dst), mode="bilinear", align_corners=False, antialias=True)
    return image.reshape(b, c, -1).transpose(1, 2).to(x.dtype)  # -> (B, L', C)


def convert_images(images: torch.Tensor, src: VisionConfig, dst: VisionConfig) -> torch.Tensor:
    """Re-express images normalised for one image tower as another tower's input.

    Args:
        images: (B, 3, S, S) normalised with ``src.mean`` / ``src.std``.
        src: the vision config the images were made for.
        dst: the vision config of the tower that will read them.

    Returns:
        (B, 3, S', S') at ``dst.image_size`` (bicubic, antialiased), normalised for ``dst``.
    """
    same_stats = tuple(src.mean) == tuple(dst.mean) and tuple(src.std) == tuple(dst.std)
    if same_stats and src.image_size == dst.image_size:
        return images

    def stats(values) -> torch.Tensor:
        return torch.tensor(values, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)

    x = images if same_stats else images * stats(src.std) + stats(src.mean)
    if src.image_size != dst.image_size:
        size = (dst.image_size, dst.image_size)
        x = F.interpolate(x, size=size, mode="bicubic", align_corners=False, antialias=True)
    return x if same_stats else (x - stats(dst.mean)) / stats(dst.std)


@torch.no_grad()
def teacher_cls_logits(teacher_head: nn.Module, teacher_tokens: torch.Tensor) -> torch.Tensor:
    """An EMA teacher head's [CLS] logits per global view: (VB, 1 + L, D) -> (V, B, C)."""
    out = teacher_head(teacher_tokens[:, 0])  # (VB, C)
    return out.reshape(NUM_VIEWS, -1, out.shape[-1])


def cls_spread(latent: torch.Tensor) -> torch.Tensor:
    """The collapse statistic every objective logs: the spread of the student's [CLS] tokens
    within each global view, (VB, 1 + K, D) -> scalar (see :func:`embedding_spread`)."""
    return embedding_spread(latent[:, 0].reshape(NUM_VIEWS, -1, latent.shape[-1]))  # (VB, D) -> (V, B, D)


class _DistillObjective(nn.Module):
    """What the distillation objectives keep besides their stages: the student, its settings,
    a teacher that always runs in eval mode, and the collapse statistics of the last batch.

    Subclasses build ``self.teacher`` (with ``visual`` and, for the embedding, ``image_proj``;
    None for an objective without one, SimCLR) and ``self.monitor`` in ``__init__``, and set
    ``self.stats`` (detached scalars) in ``forward``. ``summary`` says in a few words what the
    objective does (the command's header line). The teacher is an EMA of :meth:`online_tower`
    unless a subclass's ``update_teacher`` says otherwise (a frozen teacher, or none).
    """

    teacher: nn.Module | None
    summary: str
    stats: dict[str, torch.Tensor]
    monitor: CollapseMonitor
    # Every loss is a per-sample mean (no CLIP loss): gradient accumulation has nothing to cache.
    contrastive_features = None

    def __init__(self, model: DetailCLIP, cfg: TrainConfig):
        super().__init__()
        stages.prepare_student(model, cfg)
        self.model = model
        self.cfg = cfg

    def train(self, mode: bool = True) -> "_DistillObjective":
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()  # the teacher always runs as in inference
        return self

    def online_tower(self) -> nn.Module:
        """The student modules ``self.teacher`` mirrors: the image tower (ViT and distillation head)."""
        return self.model.image_tower()

    @torch.no_grad()
    def update_teacher(self, step: int) -> float:
        """EMA step of ``self.teacher`` towards :meth:`online_tower` at the scheduled momentum;
        returns the momentum used."""
        m = stages.teacher_momentum(self.cfg, step)
        ema_update_(self.teacher, self.online_tower(), m)
        return m

    def forward(self, view1: torch.Tensor, view2: torch.Tensor, text: torch.Tensor | None = None, *,
                step: int, local_views: torch.Tensor | None = None,
                shard: BatchShard | None = None) -> dict[str, torch.Tensor]:
        """One step's losses; each objective's ``forward`` takes these arguments and names its terms.

        Args:
            view1, view2: (B, 3, H, W) two augmented global views of the same images.
            text: ignored (captions are not used).
            step: the global step (schedules, random removal seeds).
            local_views: (B, N, 3, h, h) local crops, or None (an objective without multi-crop
                refuses them).
            shard: where the batch sits in the step's global batch (random removal rows).

        Returns:
            The named scalar losses and ``"loss"``, their weighted total (:func:`weighted_total`).
        """
        raise NotImplementedError

    def extra_metrics(self, step: int) -> dict[str, float]:
        """The collapse statistics of the last batch; warns once if they look like collapse."""
        stats = {k: v.item() for k, v in self.stats.items()}
        self.monitor.check(step=step + 1, spread=stats["spread"], entropy_value=stats.get("teacher_entropy"))
        return stats

    def image_param_counts(self) -> dict[str, int]:
        """Parameters of the student's and the teacher's image encoders (ViT + projection when present)."""
        student = [self.model.visual, self.model.image_proj]
        teacher = [m for name, m in (self.teacher.named_children() if self.teacher is not None else ())
                   if name in ("visual", "image_proj")]
        return {"student": sum(p.numel() for m in student for p in m.parameters()),
                "teacher": sum(p.numel() for m in teacher for p in m.parameters())}


class SelfDistillObjective(_DistillObjective):
    """Image-only DetailCLIP: EMA teacher, attention-guided removal, reconstruction, iBOT losses
    (``distill --method ibot``, the default).

    Args:
        model: the student; needs the distillation head.
        cfg: training settings (``w_clip`` is unused: there is no text).
    """

    summary = "ibot: self-distillation, EMA teacher"

    def __init__(self, model: DetailCLIP, cfg: TrainConfig):
        if model.head is None:
            raise ConfigError("self-distillation needs the distillation head (the model config has head: null)")
        super().__init__(model, cfg)
        self.teacher, self.cls_loss, self.patch_loss = stages.ema_teacher_parts(model, cfg, needed=True)
        # Only the image tower learns: the text tower, image projection and logit scale stay as built.
        for part in (model.text, model.image_proj, model.logit_scale):
            part.requires_grad_(False)
        self.monitor = CollapseMonitor(dim=model.visual.width, classes=model.cfg.head.out_dim)

    def teacher_temp_patch(self, step: int) -> float:
        return stages.teacher_temp_patch(self.cfg, step)

    def forward(self, view1: torch.Tensor, view2: torch.Tensor, text: torch.Tensor | None = None, *,
                step: int, local_views: torch.Tensor | None = None,
                shard: BatchShard | None = None) -> dict[str, torch.Tensor]:
        """One step's losses (arguments: :meth:`_DistillObjective.forward`): ``{"rec", "cls",
        "patch", "loss"}``, ``rec`` only with a decoder; local crops join the ``cls`` term."""
        model, c = self.model, self.cfg
        images = torch.cat([view1, view2])  # (VB, 3, H, W)
        teacher_tokens, scores = stages.teacher_pass(self.teacher, c, images)  # (VB, 1 + L, D), (VB, L) or None
        latent, removal = stages.encode_student(model, c, images, scores, step, shard)  # (VB, 1 + K, D)
        losses, features = stages.reconstruct(model, c, images, latent, removal)
        teacher_cls = self.teacher_cls_out(teacher_tokens)  # (V, B, C)
        # Statistics and the local term read the centre before the [CLS] loss moves it.
        self.stats = {
            "spread": cls_spread(latent),
            "teacher_entropy": teacher_entropy(teacher_cls, center=self.cls_loss.center,
                                               teacher_temp=c.teacher_temp_cls),
        }
        local = None
        if local_views is not None:
            student_local = model.head(stages.encode_locals(model, local_views)[:, :, 0])  # (N, B, C)
            with stage("heads_losses"):
                local = self.cls_loss.local_to_global(teacher_out=teacher_cls, student_out=student_local,
                                                      teacher_temp=c.teacher_temp_cls, student_temp=c.student_temp)
        student_tokens = features if features is not None else latent
        losses.update(stages.ibot_losses(student_head=model.head, teacher_head=self.teacher.head,
                                         cls_loss=self.cls_loss, patch_loss=self.patch_loss,
                                         student_tokens=student_tokens, student_cls=latent[:, 0],
                                         teacher_tokens=teacher_tokens,
                                         removal=removal, cfg=c, teacher_temp_patch=self.teacher_temp_patch(step)))
        with stage("heads_losses"):
            if local is not None:
                n = local_views.shape[1]
                losses["cls"] = pooled_mean((losses["cls"], NUM_VIEWS * (NUM_VIEWS - 1)), (local, NUM_VIEWS * n))
            return weighted_total(losses, c)

    def teacher_cls_out(self, teacher_tokens: torch.Tensor) -> torch.Tensor:
        """The teacher head's [CLS] logits per view: (VB, 1 + L, D) -> (V, B, C)."""
        return teacher_cls_logits(self.teacher.head, teacher_tokens)

    def extra_metrics(self, step: int) -> dict[str, float]:
        return {**super().extra_metrics(step), "teacher_temp_patch": self.teacher_temp_patch(step)}


class TeacherTargets(NamedTuple):
    """What a frozen teacher gives the student, on the student's patch grid.

    Attributes:
        embedding: (VB, E) the teacher's normalised image embedding.
        patches: (VB, L, Dt) its patch features.
        scores: (VB, L) its [CLS]-to-patch attention, or None unless removal is attention-guided.
    """

    embedding: torch.Tensor
    patches: torch.Tensor
    scores: torch.Tensor | None


class FrozenTeacherObjective(_DistillObjective):
    """A student learns from a trained, frozen teacher (any model ``resolve_model`` loads).

    The teacher's image tower and projection are kept (never updated, always in eval mode).
    The student's text tower and logit scale, taken from the teacher (``adopt_text_tower``),
    are frozen; its distillation head is not used (its decoder's feature output is, for the
    removed positions).

    Args:
        model: the student, with the teacher's text config and embedding width.
        cfg: training settings; ``w_cls``, ``w_patch``, ``w_rec`` weight the terms.
        teacher: the trained model.
    """

    summary = "frozen teacher"

    def __init__(self, model: DetailCLIP, cfg: TrainConfig, *, teacher: DetailCLIP):
        if model.cfg.embed_dim != teacher.cfg.embed_dim:
            raise ConfigError(f"the student's embed_dim {model.cfg.embed_dim} differs from the teacher's "
                              f"{teacher.cfg.embed_dim}; build it with student_config_for()")
        super().__init__(model, cfg)
        self.teacher = nn.ModuleDict({"visual": teacher.visual, "image_proj": teacher.image_proj})
        self.teacher.requires_grad_(False).eval()
        self.teacher_vision = teacher.cfg.vision
        for part in (model.text, model.logit_scale, *([model.head] if model.head is not None else [])):
            part.requires_grad_(False)
        ds, dt = model.visual.width, teacher.visual.width
        # Training-only maps from the student's width to the teacher's (saved in the train state).
        self.bridge_kept = nn.Linear(ds, dt)
        has_features = model.decoder is not None and model.decoder.has_features
        self.bridge_removed = nn.Linear(ds, dt) if has_features else None
        self.monitor = CollapseMonitor(dim=model.cfg.embed_dim)

    @torch.no_grad()
    def update_teacher(self, step: int) -> float:
        """The teacher is frozen: nothing moves (momentum 1)."""
        return 1.0

    @torch.no_grad()
    def teacher_targets(self, images: torch.Tensor) -> TeacherTargets:
        """The teacher's embedding, patch features and removal scores for the student's views (stage ``teacher``).

        Args:
            images: (VB, 3, H, W) the student's views; resized and renormalised for the teacher
                when their image settings differ.
        """
        tokens, scores = stages.teacher_pass(self.teacher, self.cfg,
                                             convert_images(images, self.model.cfg.vision, self.teacher_vision))
        with stage("teacher"):
            embedding = F.normalize(self.teacher.image_proj(tokens[:, 0]), dim=-1)  # (VB, E)
            src, dst = self.teacher_vision.grid_size, self.model.visual.grid_size
            patches = resample_grid(tokens[:, 1:], src, dst)  # (VB, Lt, Dt) -> (VB, L, Dt)
            if scores is not None:
                scores = resample_grid(scores.unsqueeze(-1), src, dst).squeeze(-1)  # (VB, Lt) -> (VB, L)
        return TeacherTargets(embedding, patches, scores)

    def forward(self, view1: torch.Tensor, view2: torch.Tensor, text: torch.Tensor | None = None, *,
                step: int, local_views: torch.Tensor | None = None,
                shard: BatchShard | None = None) -> dict[str, torch.Tensor]:
        """One step's losses (arguments: :meth:`_DistillObjective.forward`; the views at the
        student's image size, converted for the teacher): ``{"rec", "cls", "patch_kept",
        "patch_removed", "loss"}``, ``rec`` and ``patch_removed`` only with a decoder and some
        removed tokens; local crops join the ``cls`` term."""
        model, c = self.model, self.cfg
        images = torch.cat([view1, view2])  # (VB, 3, H, W)
        target = self.teacher_targets(images)
        latent, removal = stages.encode_student(model, c, images, target.scores, step, shard)  # (VB, 1 + K, Ds)
        losses, features = stages.reconstruct(model, c, images, latent, removal)
        local_emb = None
        if local_views is not None:
            local_latent = stages.encode_locals(model, local_views)  # (N, B, 1 + L', Ds)
            local_emb = model.embed_cls(local_latent.flatten(0, 1)).reshape(
                local_latent.shape[0], -1, target.embedding.shape[-1])  # (N, B, E)
        with stage("heads_losses"):
            student_emb = model.embed_cls(latent)  # (VB, E), unit norm
            losses["cls"] = cls_cosine_loss(teacher_emb=target.embedding, student_emb=student_emb,
                                            local_emb=local_emb, views=NUM_VIEWS)
            losses.update(self.patch_losses(latent, features, target.patches, removal))
            teacher_emb = target.embedding.reshape(NUM_VIEWS, -1, target.embedding.shape[-1])  # (V, B, E)
            self.stats = {"spread": embedding_spread(student_emb.reshape(teacher_emb.shape)),
                          "teacher_spread": embedding_spread(teacher_emb)}
            return weighted_total(losses, c)

    def patch_losses(self, latent: torch.Tensor, features: torch.Tensor | None, teacher_patches: torch.Tensor,
                     removal: Removal) -> dict[str, torch.Tensor]:
        """Cosine distance to the teacher's patch features at kept and removed positions, through
        the bridges.

        Args:
            latent: (VB, 1 + K, Ds) encoder tokens of the kept patches.
            features: (VB, 1 + L, Ds) decoder features (removed positions predicted from
                context), or None.
            teacher_patches: (VB, L, Dt) teacher features on the student's grid.
            removal: the removal that produced ``latent``.
        """
        out = {"patch_kept": kept_patch_cosine_loss(teacher_patches=teacher_patches,
                                                    student_kept=self.bridge_kept(latent[:, 1:]),
                                                    ids_keep=removal.ids_keep)}
        if features is not None and self.bridge_removed is not None and removal.mask.any():
            out["patch_removed"] = removed_patch_cosine_loss(
                teacher_patches=teacher_patches, student_patches=self.bridge_removed(features[:, 1:]),
                mask=removal.mask)
        return out
