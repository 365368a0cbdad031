"""The DetailCLIP objective: one training step's forward pass, returning named losses.

``forward`` reads like a table of contents: teacher pass (with token scores), token removal and
student encoder, CLIP loss (and SLIP's SimCLR loss when ``simclr_term`` is set), decoder and
reconstruction loss, distillation heads and losses. The stages other objectives share (removal,
encoding, reconstruction, heads) are functions of :mod:`detailclip_cli.core.method.stages`,
composed here. Both augmented views travel as one batch of 2B images.

Shape letters: B batch, V views (2), L patch tokens, K kept tokens, D width, C prototypes,
E embedding width, N rows of the step's global batch.
"""

from __future__ import annotations

import torch
from torch import nn

from detailclip_cli.core.config import TrainConfig
from detailclip_cli.core.distributed import BatchShard
from detailclip_cli.core.method import stages
from detailclip_cli.core.method.losses import clip_loss, nt_xent_loss, weighted_total
from detailclip_cli.core.method.stages import NUM_VIEWS, stage
from detailclip_cli.core.method.teacher import ema_update_
from detailclip_cli.core.model.detailclip import DetailCLIP
from detailclip_cli.core.model.removal import Removal


class SSLProjection(nn.Module):
    """SLIP's image MLP for the SimCLR term: Linear -> norm -> ReLU -> Linear -> norm -> ReLU -> Linear.

    SLIP normalises with SyncBatchNorm; this uses LayerNorm, per sample, so that a step's loss
    is the same however it is split into processes and micro-batches (as the loop promises:
    ``core/distributed.py``), which batch statistics of a micro-batch would break.

    Args:
        in_dim: width D of the encoder's [CLS] token.
        hidden_dim: width of the two hidden layers (``ssl_mlp_dim``, SLIP's 4096).
        out_dim: width of the projection the loss compares (``ssl_emb_dim``, SLIP's 256).
    """

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int):
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(in_dim, hidden_dim), nn.LayerNorm(hidden_dim), nn.ReLU(),
            nn.Linear(hidden_dim, hidden_dim), nn.LayerNorm(hidden_dim), nn.ReLU(),
            nn.Linear(hidden_dim, out_dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., D) -> (..., out_dim), not normalised (the loss normalises)."""
        return self.mlp(x)


class DetailCLIPObjective(nn.Module):
    """Student model + EMA teacher + the loss modules (which hold the iBOT centres).

    Args:
        model: the student.
        cfg: training settings (removal, keep ratio, weights, temperatures, schedules); with
            ``simclr_term`` the objective also holds SLIP's projection MLP (``simclr_proj``),
            which is trained, saved in the training state, and not part of the saved model.
    """

    def __init__(self, model: DetailCLIP, cfg: TrainConfig):
        super().__init__()
        stages.prepare_student(model, cfg)
        self.model = model
        self.cfg = cfg
        # The teacher exists when it has work: choosing tokens or giving distillation targets.
        self.teacher, self.cls_loss, self.patch_loss = stages.ema_teacher_parts(
            model, cfg, needed=cfg.removal == "attention" or model.head is not None)
        self.simclr_proj = (SSLProjection(model.visual.width, cfg.ssl_mlp_dim, cfg.ssl_emb_dim)
                            if cfg.simclr_term else None)

    def train(self, mode: bool = True) -> "DetailCLIPObjective":
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()  # the teacher always runs as in inference
        return self

    # -- schedules ---------------------------------------------------------------------------

    def teacher_momentum(self, step: int) -> float:
        return stages.teacher_momentum(self.cfg, step)

    def teacher_temp_patch(self, step: int) -> float:
        """The patch teacher temperature: ``teacher_temp_patch_warmup`` (0.04) for the first
        ``teacher_temp_warmup_steps`` steps (one epoch by default), then the final one (0.07)."""
        return stages.teacher_temp_patch(self.cfg, step)

    @torch.no_grad()
    def update_teacher(self, step: int) -> float:
        """EMA step of the teacher towards the student; returns the momentum used."""
        m = self.teacher_momentum(step)
        if self.teacher is not None:
            ema_update_(self.teacher, self.model.image_tower(), m)
        return m

    # -- stages ------------------------------------------------------------------------------

    def teacher_pass(self, images: torch.Tensor):
        """:func:`stages.teacher_pass` of this objective's teacher: tokens (VB, 1 + L, D), scores (VB, L)."""
        return stages.teacher_pass(self.teacher, self.cfg, images)

    def remove(self, patches: torch.Tensor, scores: torch.Tensor | None, step: int,
               shard: BatchShard | None = None) -> Removal:
        """:func:`stages.remove`: the configured removal of (VB, L, D) patch tokens."""
        return stages.remove(self.model, self.cfg, patches, scores, step, shard)

    def contrastive(self, latent: torch.Tensor, text: torch.Tensor) -> dict[str, torch.Tensor]:
        """The inputs of the losses that compare rows across the batch: the CLIP loss's ``image0``,
        ``image1`` (B, E) per view and ``text`` (B, E), normalised (stage ``text_tower``); with
        the SimCLR term, ``simclr0``, ``simclr1`` (B, ssl_emb_dim) per view, the projection of
        the encoder's [CLS] (stage ``heads_losses``)."""
        with stage("text_tower"):
            image_emb = self.model.embed_cls(latent).chunk(NUM_VIEWS)  # V x (B, E)
            features = {**{f"image{v}": e for v, e in enumerate(image_emb)}, "text": self.model.encode_text(text)}
        if self.simclr_proj is not None:
            with stage("heads_losses"):
                projected = self.simclr_proj(latent[:, 0]).chunk(NUM_VIEWS)  # (VB, D) -> V x (B, ssl_emb_dim)
                features.update({f"simclr{v}": z for v, z in enumerate(projected)})
        return features

    @torch.no_grad()
    def contrastive_features(self, view1: torch.Tensor, view2: torch.Tensor, text: torch.Tensor, *, step: int,
                             shard: BatchShard | None = None) -> dict[str, torch.Tensor]:
        """:meth:`contrastive` of a batch without gradient: the negatives gradient accumulation caches."""
        images = torch.cat([view1, view2])  # (VB, 3, H, W)
        scores = self.teacher_pass(images)[1] if self.cfg.removal == "attention" else None
        return self.contrastive(stages.encode_student(self.model, self.cfg, images, scores, step, shard)[0], text)

    def global_batch(self, features: dict[str, torch.Tensor], shard: BatchShard | None) -> dict[str, torch.Tensor]:
        """:meth:`contrastive`'s features of every row of the step (``shard`` gives the other rows;
        this batch's carry the gradient): (B, E) -> (N, E) each, in global-batch order."""
        if shard is None:
            return features
        with stage("heads_losses"):
            return {k: shard.global_features(k, f) for k, f in features.items()}

    def clip_term(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        """The CLIP loss over :meth:`global_batch`'s rows, averaged over the views (stage ``heads_losses``)."""
        with stage("heads_losses"):
            scale = self.model.scale()
            return sum(clip_loss(features[f"image{v}"], features["text"], scale)
                       for v in range(NUM_VIEWS)) / NUM_VIEWS

    def simclr_term(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
        """SLIP's SimCLR loss: NT-Xent between the two views' projections, every other view of the
        global batch a negative, as the CLIP loss's (stage ``heads_losses``)."""
        with stage("heads_losses"):
            return nt_xent_loss(features["simclr0"], features["simclr1"], self.cfg.ssl_temp)

    def forward(self, view1: torch.Tensor, view2: torch.Tensor, text: torch.Tensor, *, step: int,
                shard: BatchShard | None = None) -> dict[str, torch.Tensor]:
        """One step's losses.

        Args:
            view1, view2: (B, 3, H, W) two augmented views of the same images.
            text: (B, T) caption token ids.
            step: the global step (drives random removal seeds and schedules).
            shard: where this batch sits in the step's global batch (several processes or
                micro-batches), whose every row is a negative of the CLIP loss; None when
                the batch is the whole step.

        Returns:
            ``{"loss": total, "clip": ..., "simclr": ..., "rec": ..., "cls": ..., "patch": ...}``
            (only the active terms); ``loss`` is their weighted sum.
        """
        images = torch.cat([view1, view2])  # (VB, 3, H, W)
        teacher_tokens, scores = self.teacher_pass(images)
        latent, removal = stages.encode_student(self.model, self.cfg, images, scores, step, shard)  # (VB, 1 + K, D)

        rows = self.global_batch(self.contrastive(latent, text), shard)  # every row of the step: the negatives
        losses = {"clip": self.clip_term(rows)}
        if self.simclr_proj is not None:
            losses["simclr"] = self.simclr_term(rows)
        rec, features = stages.reconstruct(self.model, self.cfg, images, latent, removal)
        losses.update(rec)
        if self.model.head is not None:
            # Decoder features predict the removed positions from context; without them, the encoder's.
            student_tokens = features if features is not None else latent
            losses.update(self.distill_losses(student_tokens, latent[:, 0], teacher_tokens, removal, step))
        with stage("heads_losses"):
            return weighted_total(losses, self.cfg)

    def distill_losses(self, student_tokens: torch.Tensor, student_cls: torch.Tensor, teacher_tokens: torch.Tensor,
                       removal: Removal, step: int) -> dict[str, torch.Tensor]:
        """iBOT [CLS] (across views) and patch (same view) losses (:func:`stages.ibot_losses`).

        Args:
            student_tokens: (VB, 1 + L, D) decoder features on the full grid, or (VB, 1 + K, D)
                encoder tokens when there is no decoder.
            student_cls: (VB, D) the encoder's [CLS] token, for the [CLS] loss.
            teacher_tokens: (VB, 1 + L, D) teacher tokens of the full views.
            removal: the removal that produced the student's input.
            step: global step, for the patch temperature warm-up.
        """
        return stages.ibot_losses(student_head=self.model.head, teacher_head=self.teacher.head,
                                  cls_loss=self.cls_loss, patch_loss=self.patch_loss,
                                  student_tokens=student_tokens, student_cls=student_cls,
                                  teacher_tokens=teacher_tokens, removal=removal,
                                  cfg=self.cfg, teacher_temp_patch=self.teacher_temp_patch(step))
