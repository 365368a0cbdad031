"""The optimiser and its learning-rate schedule."""

from __future__ import annotations

import math

import torch

from detailclip_cli.core.choices import DecayPolicy
from detailclip_cli.core.config import TrainConfig


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up to ``cfg.lr`` then a half-cosine down to ``cfg.min_lr``.

    The warm-up runs from ``warmup_start_lr`` at step 0 to ``lr`` at step ``warmup_steps - 1``
    (the authors' linspace), or, with ``warmup_start_lr`` None, in equal rises of
    ``lr / warmup_steps`` from ``lr / warmup_steps`` (version 1's ramp).
    """
    warm = cfg.warmup_steps or 0  # None: one epoch, fixed when a run is set up; unfixed, none
    if step < warm:
        if cfg.warmup_start_lr is None:
            return cfg.lr * (step + 1) / warm
        return cfg.warmup_start_lr + (cfg.lr - cfg.warmup_start_lr) * step / max(1, warm - 1)
    t = (step - warm) / max(1, cfg.steps - warm)
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * min(t, 1.0)))


def build_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on the tensors ``cfg.weight_decay_policy`` names.

    Never on biases, norms or the logit scale (fewer than 2 dimensions); with ``all_matrices``
    (the authors') on every other tensor, embeddings included; with ``skip_embeddings`` not on
    position embeddings, [CLS] and mask tokens either. Only parameters that require a gradient
    are optimised; ``model`` may be an objective, whose frozen teacher is then left out and whose
    training-only parts (bridges) are included.
    """
    skip_embeddings = cfg.weight_decay_policy == DecayPolicy.skip_embeddings
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        is_embedding = name.endswith(("pos_embed", "cls_token", "positional_embedding", "mask_token"))
        (no_decay if p.ndim < 2 or (skip_embeddings and is_embedding) else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    # The fused kernel updates every tensor in one pass (CPU and CUDA): 4x faster than the
    # per-tensor loop on the small preset (bench: 99.5 -> 23.6 ms per step on 2 cores).
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), fused=True)
