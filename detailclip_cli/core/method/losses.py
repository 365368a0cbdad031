"""Every loss term, and the one table of their weights. They know tensors, not models.

DetailCLIP's four (CLIP, reconstruction, iBOT [CLS] and patch), and the cosine terms of
distillation from a frozen teacher. Each objective returns a dict of these terms and
:func:`weighted_total` adds their weighted sum as ``"loss"``.

Shape letters: B batch, V global views, N local crops, L patch tokens, K kept tokens,
E embedding width, D width, C prototypes (head out_dim), P patch size.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from detailclip_cli.core.config import TrainConfig


def loss_weights(cfg: TrainConfig) -> dict[str, float]:
    """The weight of every named loss term (an objective returns some of them)."""
    return {"clip": cfg.w_clip, "rec": cfg.w_rec, "cls": cfg.w_cls, "patch": cfg.w_patch,
            "patch_kept": cfg.w_patch, "patch_removed": cfg.w_patch,
            # distill --method dino|byol|simclr: DINO's term is a [CLS] distillation loss (w_cls);
            # BYOL's and SimCLR's are their objective's only term besides rec (SLIP weighs SimCLR 1 too)
            "dino": cfg.w_cls, "byol": 1.0, "simclr": 1.0}


def weighted_total(losses: dict[str, torch.Tensor], cfg: TrainConfig) -> dict[str, torch.Tensor]:
    """Add ``"loss"``, the weighted sum of the named terms (in their order), to ``losses``; returns it."""
    weights = loss_weights(cfg)
    losses["loss"] = sum(weights[k] * v for k, v in losses.items())
    return losses


def clip_loss(image_features: torch.Tensor, text_features: torch.Tensor,
              logit_scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE between matching rows of L2-normalised image and text embeddings.

    Args:
        image_features: (B, E) normalised.
        text_features: (B, E) normalised; row i is image i's caption.
        logit_scale: scalar, already exponentiated and clamped.

    Returns:
        Scalar: mean of the image->text and text->image cross-entropies.
    """
    logits = logit_scale * image_features @ text_features.T  # (B, B)
    labels = torch.arange(logits.shape[0], device=logits.device)
    return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))



def nt_xent_loss(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """SimCLR's NT-Xent: each view's partner is its positive, every other view in the batch a negative.

    Args:
        z1, z2: (B, E) the two views' projections (normalised here); row i of each is image i.
        temperature: the softmax temperature (SimCLR and SLIP use 0.1).

    Returns:
        Scalar: the mean over all 2B views of the cross-entropy of picking the partner among
        the 2B - 1 other views.
    """
    z = F.normalize(torch.cat([z1, z2]), dim=-1)  # (2B, E)
    n = z1.shape[0]
    logits = z @ z.T / temperature  # (2B, 2B)
    logits = logits.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))  # no self-pairs
    partner = torch.cat([torch.arange(n, 2 * n), torch.arange(n)]).to(z.device)  # view i <-> view i + B
    return F.cross_entropy(logits, partner)

def byol_loss(*, online_pred: torch.Tensor, target_proj: torch.Tensor) -> torch.Tensor:
    """BYOL's loss: each view's online prediction against the target's projection of another view.

    Per pair, the normalised MSE ``|p/|p| - z/|z||^2 = 2 - 2 cos(p, z)``; the mean over the
    ordered view pairs (u != v) and the batch, i.e. BYOL's symmetrised loss (a sum over the two
    directions) divided by V (V - 1). No gradient reaches the target's side (stop-gradient).

    Args:
        online_pred: (V, B, E) the online predictor's outputs of V views.
        target_proj: (V, B, E) the target network's projections of the same views.

    Returns:
        Scalar in [0, 4]: 0 when every prediction points along the other view's target.
    """
    p = F.normalize(online_pred.float(), dim=-1)  # (V, B, E) on the unit sphere
    z = F.normalize(target_proj.detach().float(), dim=-1)
    v = p.shape[0]
    terms = [(p[s] - z[t]).pow(2).sum(-1).mean() for t in range(v) for s in range(v) if s != t]
    return torch.stack(terms).mean()


def patchify(images: torch.Tensor, patch_size: int) -> torch.Tensor:
    """(B, 3, H, W) -> (B, L, P*P*3), patches in row-major grid order, pixels (p, q, channel)."""
    b, c, h, w = images.shape
    p = patch_size
    x = images.reshape(b, c, h // p, p, w // p, p)
    x = x.permute(0, 2, 4, 3, 5, 1)  # (B, gh, gw, P, P, C)
    return x.reshape(b, (h // p) * (w // p), p * p * c)


def unpatchify(patches: torch.Tensor, patch_size: int, grid: tuple[int, int]) -> torch.Tensor:
    """Inverse of :func:`patchify`: (B, L, P*P*3) -> (B, 3, gh*P, gw*P)."""
    b = patches.shape[0]
    gh, gw = grid
    p = patch_size
    x = patches.reshape(b, gh, gw, p, p, 3).permute(0, 5, 1, 3, 2, 4)  # (B, C, gh, P, gw, P)
    return x.reshape(b, 3, gh * p, gw * p)


def normalize_patches(target: torch.Tensor, eps: float = 1e-6):
    """Per-patch normalisation of pixel targets: subtract each patch's mean, divide by its std.

    Returns:
        normalised (B, L, N), mean (B, L, 1), std (B, L, 1), so predictions can be mapped back.
    """
    mean = target.mean(dim=-1, keepdim=True)
    std = (target.var(dim=-1, keepdim=True) + eps).sqrt()
    return (target - mean) / std, mean, std


def reconstruction_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor,
                        norm_pix: bool = True) -> torch.Tensor:
    """Mean squared error on removed patches.

    Args:
        pred: (B, L, P*P*3) predicted pixels.
        target: (B, L, P*P*3) true pixels (``patchify`` of the input images).
        mask: (B, L) bool, True where the patch was removed. If nothing was removed, every
            patch counts (the decoder is then a plain autoencoder).
        norm_pix: compare against per-patch normalised targets.

    Returns:
        Scalar loss.
    """
    if norm_pix:
        target, _, _ = normalize_patches(target)
    per_patch = (pred.float() - target.float()).pow(2).mean(dim=-1)  # (B, L)
    weight = mask.float() if mask.any() else torch.ones_like(per_patch)
    return (per_patch * weight).sum() / weight.sum()


class _Centered(nn.Module):
    """Holds the running centre of the teacher's logits (momentum EMA, averaged across ranks)."""

    def __init__(self, out_dim: int, center_momentum: float):
        super().__init__()
        self.center_momentum = center_momentum
        self.register_buffer("center", torch.zeros(1, out_dim))
        self._pending: list[tuple[torch.Tensor, int]] | None = None  # see deferred_center_updates

    def teacher_probs(self, teacher_out: torch.Tensor, teacher_temp: float) -> torch.Tensor:
        """Centred and sharpened teacher distribution (..., C), no gradient."""
        return F.softmax((teacher_out.detach().float() - self.center) / teacher_temp, dim=-1)

    @torch.no_grad()
    def update_center(self, teacher_out: torch.Tensor) -> None:
        """EMA of the mean teacher logit vector over all leading dimensions (and processes).

        Inside :func:`deferred_center_updates` the logits are only summed, for one move later.
        """
        flat = teacher_out.detach().float().reshape(-1, teacher_out.shape[-1])
        total = flat.sum(dim=0, keepdim=True)  # (1, C)
        if self._pending is not None:
            self._pending.append((total, flat.shape[0]))
        else:
            self._move_center(total, flat.shape[0])

    @torch.no_grad()
    def _move_center(self, total: torch.Tensor, count: int) -> None:
        """One EMA step towards ``total / count``, both summed over the processes first."""
        stats = torch.cat([total.flatten(), total.new_tensor([float(count)])])  # (C + 1,): one all-reduce
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(stats)
        batch_center = (stats[:-1] / stats[-1]).unsqueeze(0)  # (1, C)
        m = self.center_momentum
        self.center.mul_(m).add_(batch_center, alpha=1 - m)


@contextmanager
def deferred_center_updates(module: nn.Module) -> Iterator[None]:
    """Move every centre under ``module`` once, at the end, by the mean of all the updates asked for inside.

    The training loop wraps an optimiser step in it, so a step of several micro-batches (or
    processes) moves each centre once, by the mean over its whole batch, and every
    micro-batch's loss reads the centre of the step before, as one big batch would. On an
    exception the pending updates are dropped.
    """
    centred = [m for m in module.modules() if isinstance(m, _Centered)]
    for m in centred:
        m._pending = []
    try:
        yield
        for m in centred:
            if m._pending:
                m._move_center(sum(t for t, _ in m._pending), sum(n for _, n in m._pending))
    finally:
        for m in centred:
            m._pending = None


class ClsDistillLoss(_Centered):
    """DINO/iBOT [CLS] loss across views: the student's view u matches the teacher's view v."""

    def forward(self, *, teacher_out: torch.Tensor, student_out: torch.Tensor,
                teacher_temp: float, student_temp: float = 0.1) -> torch.Tensor:
        """
        Args:
            teacher_out: (V, B, C) teacher [CLS] logits of V global views.
            student_out: (V, B, C) student [CLS] logits of the same views.
            teacher_temp: sharpening temperature for the teacher.
            student_temp: temperature for the student.

        Returns:
            Scalar: mean over ordered view pairs (u != v) of the cross-entropy H(teacher_v, student_u).
            Updates the centre afterwards.
        """
        q = self.teacher_probs(teacher_out, teacher_temp)  # (V, B, C)
        log_p = F.log_softmax(student_out.float() / student_temp, dim=-1)  # (V, B, C)
        v = q.shape[0]
        terms = [-(q[t] * log_p[s]).sum(-1).mean() for t in range(v) for s in range(v) if s != t]
        self.update_center(teacher_out)
        return torch.stack(terms).mean()

    def local_to_global(self, *, teacher_out: torch.Tensor, student_out: torch.Tensor,
                        teacher_temp: float, student_temp: float = 0.1) -> torch.Tensor:
        """DINO's multi-crop term: every local crop of the student against every global teacher view.

        Reads the centre without moving it (the global views' :meth:`forward` does that).

        Args:
            teacher_out: (V, B, C) teacher [CLS] logits of the global views.
            student_out: (N, B, C) student [CLS] logits of N local crops.

        Returns:
            Scalar: the mean over the V * N pairs of H(teacher_v, student_n).
        """
        q = self.teacher_probs(teacher_out, teacher_temp)  # (V, B, C)
        log_p = F.log_softmax(student_out.float() / student_temp, dim=-1)  # (N, B, C)
        return -torch.einsum("vbc,nbc->vnb", q, log_p).mean()


class PatchDistillLoss(_Centered):
    """iBOT patch loss: the student's patch distributions match the teacher's, same view."""

    def forward(self, *, teacher_out: torch.Tensor, student_out: torch.Tensor, mask: torch.Tensor,
                teacher_temp: float, student_temp: float = 0.1,
                center_with: torch.Tensor | None = None) -> torch.Tensor:
        """
        Args:
            teacher_out: (B, L, C) teacher patch logits.
            student_out: (B, L, C) student patch logits at the same positions.
            mask: (B, L) bool, the positions that count (removed patches); all when none set.
            teacher_temp: sharpening temperature for the teacher.
            student_temp: temperature for the student.
            center_with: (B, L', C) the teacher logits the centre is updated with, when the
                caller passes only a subset of positions as ``teacher_out`` (the centre must
                still follow every patch); defaults to ``teacher_out``.

        Returns:
            Scalar: per-sample mean cross-entropy over the counted positions, averaged over B.
            Updates the centre afterwards.
        """
        q = self.teacher_probs(teacher_out, teacher_temp)  # (B, L, C)
        log_p = F.log_softmax(student_out.float() / student_temp, dim=-1)  # (B, L, C)
        ce = -(q * log_p).sum(-1)  # (B, L)
        weight = mask.float() if mask.any() else torch.ones_like(ce)
        per_sample = (ce * weight).sum(-1) / weight.sum(-1).clamp(min=1.0)  # (B,)
        self.update_center(teacher_out if center_with is None else center_with)
        return per_sample.mean()


# -- distillation from a frozen teacher: cosine distances ------------------------------------------


def cosine_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """1 - cosine similarity along the last dimension, broadcasting: (..., D), (..., D) -> (...)."""
    return 1.0 - F.cosine_similarity(a.float(), b.float(), dim=-1)


def pooled_mean(*terms: tuple[torch.Tensor, int]) -> torch.Tensor:
    """The mean over all view pairs of losses given as ``(mean over its pairs, number of pairs)``."""
    return sum(loss * n for loss, n in terms) / sum(n for _, n in terms)


def cls_cosine_loss(*, teacher_emb: torch.Tensor, student_emb: torch.Tensor,
                    local_emb: torch.Tensor | None = None, views: int = 2) -> torch.Tensor:
    """Cosine distance of the student's image embeddings to the teacher's.

    Args:
        teacher_emb: (VB, E) the teacher's embeddings of V global views (views stacked).
        student_emb: (VB, E) the student's embeddings of the same views.
        local_emb: (N, B, E) the student's embeddings of N local crops per image, or None.
        views: V.

    Returns:
        Scalar: the mean over all pairs: each global view with itself (V pairs), each local
        crop with each global view (V * N pairs).
    """
    loss = cosine_distance(student_emb, teacher_emb).mean()  # same view
    if local_emb is None:
        return loss
    teacher = teacher_emb.reshape(views, -1, teacher_emb.shape[-1])  # (VB, E) -> (V, B, E)
    local = cosine_distance(local_emb.unsqueeze(0), teacher.unsqueeze(1)).mean()  # over (V, N, B)
    return pooled_mean((loss, views), (local, views * local_emb.shape[0]))


def kept_patch_cosine_loss(*, teacher_patches: torch.Tensor, student_kept: torch.Tensor,
                           ids_keep: torch.Tensor) -> torch.Tensor:
    """Mean cosine distance of the student's kept patch tokens to the teacher's at those positions.

    Args:
        teacher_patches: (B, L, D) teacher patch features on the student's grid.
        student_kept: (B, K, D) student tokens of the kept patches, mapped to the teacher's width.
        ids_keep: (B, K) their positions in the grid.
    """
    ids = ids_keep.unsqueeze(-1).expand(-1, -1, teacher_patches.shape[-1])
    target = torch.gather(teacher_patches, 1, ids)  # (B, L, D) -> (B, K, D)
    return cosine_distance(student_kept, target).mean()


def removed_patch_cosine_loss(*, teacher_patches: torch.Tensor, student_patches: torch.Tensor,
                              mask: torch.Tensor) -> torch.Tensor:
    """Mean cosine distance to the teacher's patch features over the removed positions.

    Args:
        teacher_patches: (B, L, D) teacher patch features.
        student_patches: (B, L, D) the student's features on the full grid (removed positions
            predicted from context), mapped to the teacher's width.
        mask: (B, L) bool, True where the patch was removed (some must be).
    """
    dist = cosine_distance(student_patches, teacher_patches)  # (B, L)
    weight = mask.float()
    return (dist * weight).sum() / weight.sum()


def entropy(probs: torch.Tensor) -> torch.Tensor:
    """Mean Shannon entropy (nats) of distributions along the last dimension."""
    return -(probs * probs.clamp_min(1e-12).log()).sum(-1).mean()
