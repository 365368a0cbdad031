"""The DetailCLIP objective: one training step's forward pass, returning named losses.

``forward`` reads like a table of contents: teacher pass (with token scores), token removal,
student encoder, CLIP loss, decoder and reconstruction loss, distillation heads and losses.
Both augmented views travel as one batch of 2B images.

Shape letters: B batch, V views (2), L patch tokens, K kept tokens, D width, C prototypes.
"""

from __future__ import annotations

import torch
from torch import nn

from detailclip_cli.core.config import TrainConfig
from detailclip_cli.core.distributed import BatchShard
from detailclip_cli.core.method.losses import ClsDistillLoss, PatchDistillLoss, clip_loss, patchify, reconstruction_loss
from detailclip_cli.core.method.teacher import cosine_schedule, ema_update_, make_teacher
from detailclip_cli.core.model.detailclip import DetailCLIP
from detailclip_cli.core.model.removal import Removal, random_scores, remove_tokens

NUM_VIEWS = 2


class DetailCLIPObjective(nn.Module):
    """Student model + EMA teacher + the loss modules (which hold the iBOT centres).

    Args:
        model: the student.
        cfg: training settings (removal, keep ratio, weights, temperatures, schedules).
    """

    def __init__(self, model: DetailCLIP, cfg: TrainConfig):
        super().__init__()
        cfg.validate(model.cfg)
        self.model = model
        self.cfg = cfg
        model.visual.set_grad_checkpointing(cfg.grad_checkpointing)
        model.text.set_grad_checkpointing(cfg.grad_checkpointing)
        # The teacher exists when it has work: choosing tokens or giving distillation targets.
        self.teacher = None
        if cfg.removal == "attention" or model.head is not None:
            self.teacher = make_teacher(model.image_tower())
        self.cls_loss = self.patch_loss = None
        if model.head is not None:
            out_dim = model.cfg.head.out_dim
            self.cls_loss = ClsDistillLoss(out_dim, cfg.center_momentum)
            self.patch_loss = PatchDistillLoss(out_dim, cfg.center_momentum)

    def train(self, mode: bool = True) -> "DetailCLIPObjective":
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()  # the teacher always runs as in inference
        return self

    # -- schedules ---------------------------------------------------------------------------

    def teacher_momentum(self, step: int) -> float:
        return cosine_schedule(step, self.cfg.steps, self.cfg.momentum_base, self.cfg.momentum_final)

    def teacher_temp_patch(self, step: int) -> float:
        """Linear warm-up of the patch teacher temperature over the first part of training."""
        c = self.cfg
        warm = int(c.teacher_temp_warmup_frac * c.steps)
        if warm <= 0:
            return c.teacher_temp_patch
        t = min(step / warm, 1.0)
        return c.teacher_temp_patch_warmup + t * (c.teacher_temp_patch - c.teacher_temp_patch_warmup)

    @torch.no_grad()
    def update_teacher(self, step: int) -> float:
        """EMA step of the teacher towards the student; returns the momentum used."""
        m = self.teacher_momentum(step)
        if self.teacher is not None:
            ema_update_(self.teacher, self.model.image_tower(), m)
        return m

    # -- stages ------------------------------------------------------------------------------

    @torch.no_grad()
    def teacher_pass(self, images: torch.Tensor):
        """Teacher tokens and [CLS]-to-patch scores of the full views.

        Args:
            images: (VB, 3, H, W).

        Returns:
            tokens (VB, 1 + L, D) or None without a teacher; scores (VB, L) or None unless
            removal is attention-guided.
        """
        if self.teacher is None:
            return None, None
        if self.cfg.removal == "attention":
            return self.teacher.visual.forward_with_scores(images, self.cfg.score_layer)
        return self.teacher.visual(images), None

    def remove(self, patches: torch.Tensor, scores: torch.Tensor | None, step: int,
               shard: BatchShard | None = None) -> Removal:
        """Apply the configured removal strategy to (VB, L, D) position-embedded patch tokens.

        ``shard`` places the batch in its step's global batch: random scores are drawn for every
        global row and this batch's rows taken, so they do not depend on how the step is split.
        """
        c = self.cfg
        n, length = patches.shape[:2]
        grid = self.model.visual.grid_size
        if c.removal == "none" or c.keep_ratio >= 1.0:
            scores, keep_ratio, block = torch.zeros(n, length, device=patches.device), 1.0, 1
        else:
            keep_ratio, block = c.keep_ratio, c.block_size
            if c.removal == "random":
                # Seeded by (seed, step) so a resumed run removes exactly the same tokens.
                g = torch.Generator().manual_seed(c.seed * 1_000_003 + step)
                if shard is None:
                    scores = random_scores(n, length, generator=g, device=patches.device)
                else:
                    everyone = random_scores(NUM_VIEWS * shard.global_size, length, generator=g)
                    everyone = everyone.view(NUM_VIEWS, shard.global_size, length)  # (V * G, L) -> (V, G, L)
                    scores = shard.rows(everyone, n // NUM_VIEWS).to(patches.device)  # (VB, L)
        return remove_tokens(patches, scores, keep_ratio, grid=grid, block_size=block)

    def encode_student(self, images: torch.Tensor, scores: torch.Tensor | None, step: int,
                       shard: BatchShard | None = None) -> tuple[torch.Tensor, Removal]:
        """Token removal and the student encoder: (VB, 3, H, W) -> latent (VB, 1 + K, D), removal."""
        removal = self.remove(self.model.visual.embed_patches(images), scores, step, shard)
        latent, _ = self.model.visual.forward_tokens(removal.kept)
        return latent, removal

    def contrastive(self, latent: torch.Tensor, text: torch.Tensor) -> dict[str, torch.Tensor]:
        """The CLIP loss's inputs: ``image0``, ``image1`` (B, E) per view and ``text`` (B, E), normalised."""
        image_emb = self.model.embed_cls(latent).chunk(NUM_VIEWS)  # V x (B, E)
        return {**{f"image{v}": e for v, e in enumerate(image_emb)}, "text": self.model.encode_text(text)}

    @torch.no_grad()
    def contrastive_features(self, view1: torch.Tensor, view2: torch.Tensor, text: torch.Tensor, *, step: int,
                             shard: BatchShard | None = None) -> dict[str, torch.Tensor]:
        """:meth:`contrastive` of a batch without gradient: the negatives gradient accumulation caches."""
        images = torch.cat([view1, view2])  # (VB, 3, H, W)
        scores = self.teacher_pass(images)[1] if self.cfg.removal == "attention" else None
        return self.contrastive(self.encode_student(images, scores, step, shard)[0], text)

    def clip_term(self, features: dict[str, torch.Tensor], shard: BatchShard | None) -> torch.Tensor:
        """The CLIP loss over the global batch (``shard`` gives the other rows), averaged over the views."""
        if shard is not None:
            features = {k: shard.global_features(k, f) for k, f in features.items()}  # (B, E) -> (N, E)
        scale = self.model.scale()
        return sum(clip_loss(features[f"image{v}"], features["text"], scale) for v in range(NUM_VIEWS)) / NUM_VIEWS

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
            ``{"loss": total, "clip": ..., "rec": ..., "cls": ..., "patch": ...}`` (only the
            active terms); ``loss`` is their weighted sum.
        """
        c, model = self.cfg, self.model
        images = torch.cat([view1, view2])  # (VB, 3, H, W)
        teacher_tokens, scores = self.teacher_pass(images)
        latent, removal = self.encode_student(images, scores, step, shard)  # (VB, 1 + K, D)

        losses = {"clip": self.clip_term(self.contrastive(latent, text), shard)}

        student_tokens = latent
        if model.decoder is not None:
            pred, features = model.decoder(latent, removal.ids_restore)  # (VB, L, P*P*3)
            target = patchify(images, model.visual.patch_size)
            losses["rec"] = reconstruction_loss(pred, target, removal.mask, c.norm_pix_loss)
            if features is not None:
                student_tokens = features  # (VB, 1 + L, D): removed positions predicted from context

        if model.head is not None:
            losses.update(self.distill_losses(student_tokens, teacher_tokens, removal, step))

        weights = {"clip": c.w_clip, "rec": c.w_rec, "cls": c.w_cls, "patch": c.w_patch}
        losses["loss"] = sum(weights[k] * v for k, v in losses.items())
        return losses

    def distill_losses(self, student_tokens: torch.Tensor, teacher_tokens: torch.Tensor,
                       removal: Removal, step: int) -> dict[str, torch.Tensor]:
        """iBOT [CLS] (across views) and patch (same view) losses.

        Args:
            student_tokens: (VB, 1 + L, D) decoder features on the full grid, or (VB, 1 + K, D)
                encoder tokens when there is no decoder.
            teacher_tokens: (VB, 1 + L, D) teacher tokens of the full views.
            removal: the removal that produced the student's input.
            step: global step, for the patch temperature warm-up.
        """
        teacher_out = self.teacher.head(teacher_tokens)  # (VB, 1 + L, C)
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
                rows = torch.cat([positions.new_zeros(vb, 1), positions + 1], dim=1)  # (VB, 1 + M)
                rows = rows.unsqueeze(-1).expand(-1, -1, student_tokens.shape[-1])
                student_tokens = torch.gather(student_tokens, 1, rows)  # (VB, 1 + M, D)
            ids = positions.unsqueeze(-1).expand(-1, -1, t_patch.shape[-1])
            t_patch = torch.gather(t_patch, 1, ids)  # (VB, L, C) -> (VB, M, C)
        student_out = self.model.head(student_tokens)  # (VB, 1 + M, C)
        # Every compared position counts: the removed ones with a decoder, the kept ones without.
        mask = torch.ones(t_patch.shape[:2], dtype=torch.bool, device=t_patch.device)
        shape = (NUM_VIEWS, vb // NUM_VIEWS, -1)
        return {
            "cls": self.cls_loss(
                teacher_out=teacher_out[:, 0].reshape(shape), student_out=student_out[:, 0].reshape(shape),
                teacher_temp=self.cfg.teacher_temp_cls, student_temp=self.cfg.student_temp,
            ),
            "patch": self.patch_loss(
                teacher_out=t_patch, student_out=student_out[:, 1:], mask=mask,
                teacher_temp=self.teacher_temp_patch(step), student_temp=self.cfg.student_temp,
                center_with=teacher_out[:, 1:],
            ),
        }
