"""Distillation: train an image tower from a teacher, from images alone (no captions needed).

Two objectives, both trained by the loop of :mod:`detailclip_cli.core.training.loop` (:func:`fit`):

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

Shape letters: B batch, V global views (2), N local crops, L patch tokens, K kept tokens,
D width (Ds student, Dt teacher), E embedding width, C prototypes, P patch size."""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from detailclip_cli.core.config import ConfigError, TrainConfig, VisionConfig
from detailclip_cli.core.distributed import BatchShard
from detailclip_cli.core.method.collapse import CollapseMonitor, embedding_spread, teacher_entropy
from detailclip_cli.core.method.losses import patchify, reconstruction_loss
from detailclip_cli.core.method.objective import NUM_VIEWS, DetailCLIPObjective
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


def cosine_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """1 - cosine similarity along the last dimension, broadcasting: (..., D), (..., D) -> (...)."""
    return 1.0 - F.cosine_similarity(a.float(), b.float(), dim=-1)


def pooled_mean(*terms: tuple[torch.Tensor, int]) -> torch.Tensor:
    """The mean over all view pairs of losses given as ``(mean over its pairs, number of pairs)``."""
    return sum(loss * n for loss, n in terms) / sum(n for _, n in terms)


class _DistillObjective(DetailCLIPObjective):
    """The stages both distillation objectives share, on top of DetailCLIP's teacher pass and removal.

    Subclasses set ``self.stats`` (detached scalars for the log) in ``forward`` and
    ``self.monitor`` (a :class:`CollapseMonitor`) in ``__init__``.
    """

    stats: dict[str, torch.Tensor]
    monitor: CollapseMonitor
    # Every loss is a per-sample mean (no CLIP loss): gradient accumulation has nothing to cache.
    contrastive_features = None

    def reconstruct(self, images: torch.Tensor, latent: torch.Tensor,
                    removal: Removal) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
        """The decoder's pixel loss, and its features on the full grid.

        Returns:
            ``{"rec": loss}`` (empty without a decoder) and features (VB, 1 + L, Ds), or None
            when there is no decoder or it has no feature output.
        """
        if self.model.decoder is None:
            return {}, None
        pred, features = self.model.decoder(latent, removal.ids_restore)  # (VB, L, P*P*3)
        target = patchify(images, self.model.visual.patch_size)
        return {"rec": reconstruction_loss(pred, target, removal.mask, self.cfg.norm_pix_loss)}, features

    def encode_locals(self, local_views: torch.Tensor) -> torch.Tensor:
        """The student's tokens of whole local crops: (B, N, 3, h, h) -> (N, B, 1 + L', Ds)."""
        b, n = local_views.shape[:2]
        flat = local_views.transpose(0, 1).reshape(n * b, *local_views.shape[2:])  # (B, N, ..) -> (NB, ..)
        visual = self.model.visual
        latent, _ = visual.forward_tokens(visual.embed_patches(flat, interpolate_pos=True))  # (NB, 1 + L', Ds)
        return latent.reshape(n, b, *latent.shape[1:])

    def total(self, losses: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Add ``"loss"``, the weighted sum of the named terms."""
        c = self.cfg
        weights = {"rec": c.w_rec, "cls": c.w_cls, "patch": c.w_patch,
                   "patch_kept": c.w_patch, "patch_removed": c.w_patch}
        losses["loss"] = sum(weights[k] * v for k, v in losses.items())
        return losses

    def extra_metrics(self, step: int) -> dict[str, float]:
        """The collapse statistics of the last batch; warns once if they look like collapse."""
        stats = {k: v.item() for k, v in self.stats.items()}
        self.monitor.check(step=step + 1, spread=stats["spread"], entropy_value=stats.get("teacher_entropy"))
        return stats

    def image_param_counts(self) -> dict[str, int]:
        """Parameters of the student's and the teacher's image encoders (ViT + projection when present)."""
        student = [self.model.visual, self.model.image_proj]
        teacher = [m for name, m in self.teacher.named_children() if name in ("visual", "image_proj")]
        return {"student": sum(p.numel() for m in student for p in m.parameters()),
                "teacher": sum(p.numel() for m in teacher for p in m.parameters())}


class SelfDistillObjective(_DistillObjective):
    """Image-only DetailCLIP: EMA teacher, attention-guided removal, reconstruction, iBOT losses.

    Args:
        model: the student; needs the distillation head.
        cfg: training settings (``w_clip`` is unused: there is no text).
    """

    def __init__(self, model: DetailCLIP, cfg: TrainConfig):
        if model.head is None:
            raise ConfigError("self-distillation needs the distillation head (the model config has head: null)")
        super().__init__(model, cfg)
        # Only the image tower learns: the text tower, image projection and logit scale stay as built.
        for part in (model.text, model.image_proj, model.logit_scale):
            part.requires_grad_(False)
        self.monitor = CollapseMonitor(dim=model.visual.width, classes=model.cfg.head.out_dim)

    def forward(self, view1: torch.Tensor, view2: torch.Tensor, text: torch.Tensor | None = None, *,
                step: int, local_views: torch.Tensor | None = None,
                shard: BatchShard | None = None) -> dict[str, torch.Tensor]:
        """One step's losses.

        Args:
            view1, view2: (B, 3, H, W) two augmented global views of the same images.
            text: ignored (captions are not used).
            step: the global step (schedules, random removal seeds).
            local_views: (B, N, 3, h, h) local crops, or None.
            shard: where the batch sits in the step's global batch (random removal rows).

        Returns:
            ``{"rec", "cls", "patch", "loss"}`` (``rec`` only with a decoder).
        """
        images = torch.cat([view1, view2])  # (VB, 3, H, W)
        teacher_tokens, scores = self.teacher_pass(images)  # (VB, 1 + L, D), (VB, L) or None
        latent, removal = self.encode_student(images, scores, step, shard)  # (VB, 1 + K, D)
        losses, features = self.reconstruct(images, latent, removal)
        teacher_cls = self.teacher_cls_out(teacher_tokens)  # (V, B, C)
        # Statistics and the local term read the centre before the [CLS] loss moves it.
        self.stats = {
            "spread": embedding_spread(latent[:, 0].reshape(NUM_VIEWS, -1, latent.shape[-1])),
            "teacher_entropy": teacher_entropy(teacher_cls, center=self.cls_loss.center,
                                               teacher_temp=self.cfg.teacher_temp_cls),
        }
        local = self.local_cls_loss(teacher_cls, local_views) if local_views is not None else None
        student_tokens = features if features is not None else latent
        losses.update(self.distill_losses(student_tokens, teacher_tokens, removal, step))
        if local is not None:
            n = local_views.shape[1]
            losses["cls"] = pooled_mean((losses["cls"], NUM_VIEWS * (NUM_VIEWS - 1)), (local, NUM_VIEWS * n))
        return self.total(losses)

    @torch.no_grad()
    def teacher_cls_out(self, teacher_tokens: torch.Tensor) -> torch.Tensor:
        """The teacher head's [CLS] logits per view: (VB, 1 + L, D) -> (V, B, C)."""
        out = self.teacher.head(teacher_tokens[:, 0])  # (VB, C)
        return out.reshape(NUM_VIEWS, -1, out.shape[-1])

    def local_cls_loss(self, teacher_cls: torch.Tensor, local_views: torch.Tensor) -> torch.Tensor:
        """DINO's local-to-global [CLS] loss: every local crop against both global teacher views.

        Args:
            teacher_cls: (V, B, C) teacher [CLS] logits of the global views.
            local_views: (B, N, 3, h, h).

        Returns:
            Scalar: the mean over the V * N pairs of H(teacher_v, student_n).
        """
        c = self.cfg
        student_out = self.model.head(self.encode_locals(local_views)[:, :, 0])  # (N, B, C)
        q = self.cls_loss.teacher_probs(teacher_cls, c.teacher_temp_cls)  # (V, B, C)
        log_p = F.log_softmax(student_out.float() / c.student_temp, dim=-1)  # (N, B, C)
        return -torch.einsum("vbc,nbc->vnb", q, log_p).mean()

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

    The teacher's image tower and projection are kept (never updated, always in eval mode); the
    EMA copy and iBOT centres the parent builds are dropped. The student's text tower and logit
    scale, taken from the teacher (:func:`adopt_text_tower`), are frozen; its distillation head
    is not used (its decoder's feature output is, for the removed positions).

    Args:
        model: the student, with the teacher's text config and embedding width.
        cfg: training settings; ``w_cls``, ``w_patch``, ``w_rec`` weight the terms.
        teacher: the trained model.
    """

    def __init__(self, model: DetailCLIP, cfg: TrainConfig, *, teacher: DetailCLIP):
        if model.cfg.embed_dim != teacher.cfg.embed_dim:
            raise ConfigError(f"the student's embed_dim {model.cfg.embed_dim} differs from the teacher's "
                              f"{teacher.cfg.embed_dim}; build it with student_config_for()")
        super().__init__(model, cfg)
        self.cls_loss = self.patch_loss = None
        self.teacher = nn.ModuleDict({"visual": teacher.visual, "image_proj": teacher.image_proj})
        self.teacher.requires_grad_(False).eval()
        self.teacher_vision = teacher.cfg.vision
        for part in (model.text, model.logit_scale, *([model.head] if model.head is not None else [])):
            part.requires_grad_(False)
        ds, dt = model.visual.width, teacher.visual.width
        # Training-only maps from the student's width to the teacher's (saved in the train state).
        self.bridge_kept = nn.Linear(ds, dt)
        has_features = model.decoder is not None and model.decoder.to_features is not None
        self.bridge_removed = nn.Linear(ds, dt) if has_features else None
        self.monitor = CollapseMonitor(dim=model.cfg.embed_dim)

    @torch.no_grad()
    def update_teacher(self, step: int) -> float:
        """The teacher is frozen: nothing moves (momentum 1)."""
        return 1.0

    @torch.no_grad()
    def teacher_targets(self, images: torch.Tensor) -> TeacherTargets:
        """The teacher's embedding, patch features and removal scores for the student's views.

        Args:
            images: (VB, 3, H, W) the student's views; resized and renormalised for the teacher
                when their image settings differ.
        """
        tokens, scores = self.teacher_pass(convert_images(images, self.model.cfg.vision, self.teacher_vision))
        embedding = F.normalize(self.teacher.image_proj(tokens[:, 0]), dim=-1)  # (VB, E)
        src, dst = self.teacher_vision.grid_size, self.model.visual.grid_size
        patches = resample_grid(tokens[:, 1:], src, dst)  # (VB, Lt, Dt) -> (VB, L, Dt)
        if scores is not None:
            scores = resample_grid(scores.unsqueeze(-1), src, dst).squeeze(-1)  # (VB, Lt) -> (VB, L)
        return TeacherTargets(embedding, patches, scores)

    def forward(self, view1: torch.Tensor, view2: torch.Tensor, text: torch.Tensor | None = None, *,
                step: int, local_views: torch.Tensor | None = None,
                shard: BatchShard | None = None) -> dict[str, torch.Tensor]:
        """One step's losses.

        Args:
            view1, view2: (B, 3, H, W) two augmented views, at the student's image size.
            text: ignored (the teacher's embedding is the target).
            step: the global step (random removal seeds).
            local_views: (B, N, 3, h, h) local crops, or None.
            shard: where the batch sits in the step's global batch (random removal rows).

        Returns:
            ``{"rec", "cls", "patch_kept", "patch_removed", "loss"}`` (``rec`` and
            ``patch_removed`` only with a decoder and some removed tokens).
        """
        images = torch.cat([view1, view2])  # (VB, 3, H, W)
        target = self.teacher_targets(images)
        latent, removal = self.encode_student(images, target.scores, step, shard)  # (VB, 1 + K, Ds)
        losses, features = self.reconstruct(images, latent, removal)

        student_emb = self.model.embed_cls(latent)  # (VB, E), unit norm
        losses["cls"] = cosine_distance(student_emb, target.embedding).mean()  # same view
        teacher_emb = target.embedding.reshape(NUM_VIEWS, -1, target.embedding.shape[-1])  # (V, B, E)
        if local_views is not None:
            local_latent = self.encode_locals(local_views)  # (N, B, 1 + L', Ds)
            local_emb = self.model.embed_cls(local_latent.flatten(0, 1)).reshape(local_latent.shape[0], -1,
                                                                                teacher_emb.shape[-1])  # (N, B, E)
            local = cosine_distance(local_emb.unsqueeze(0), teacher_emb.unsqueeze(1)).mean()  # over (V, N, B)
            losses["cls"] = pooled_mean((losses["cls"], NUM_VIEWS), (local, NUM_VIEWS * local_emb.shape[0]))
        losses.update(self.patch_losses(latent, features, target.patches, removal))
        self.stats = {"spread": embedding_spread(student_emb.reshape(teacher_emb.shape)),
                      "teacher_spread": embedding_spread(teacher_emb)}
        return self.total(losses)

    def patch_losses(self, latent: torch.Tensor, features: torch.Tensor | None, teacher_patches: torch.Tensor,
                     removal: Removal) -> dict[str, torch.Tensor]:
        """Cosine distance to the teacher's patch features at kept and removed positions.

        Args:
            latent: (VB, 1 + K, Ds) encoder tokens of the kept patches.
            features: (VB, 1 + L, Ds) decoder features (removed positions predicted from
                context), or None.
            teacher_patches: (VB, L, Dt) teacher features on the student's grid.
            removal: the removal that produced ``latent``.
        """
        ids = removal.ids_keep.unsqueeze(-1).expand(-1, -1, teacher_patches.shape[-1])
        kept_target = torch.gather(teacher_patches, 1, ids)  # (VB, L, Dt) -> (VB, K, Dt)
        out = {"patch_kept": cosine_distance(self.bridge_kept(latent[:, 1:]), kept_target).mean()}
        if features is not None and self.bridge_removed is not None and removal.mask.any():
            dist = cosine_distance(self.bridge_removed(features[:, 1:]), teacher_patches)  # (VB, L)
            mask = removal.mask.float()
            out["patch_removed"] = (dist * mask).sum() / mask.sum()
        return out
