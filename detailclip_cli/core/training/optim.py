"""The optimiser and its learning-rate schedule."""

from __future__ import annotations

import math

import torch

from detailclip_cli.core.config import TrainConfig


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up to ``cfg.lr`` then a half-cosine down to ``cfg.min_lr``."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    t = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * min(t, 1.0)))


def build_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW with no weight decay on biases, norms, embeddings and the logit scale (1-D or scalar).

    Only parameters that require a gradient are optimised; ``model`` may be an objective, whose
    frozen teacher is then left out and whose training-only parts (bridges) are included.
    """
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        is_embedding = name.endswith(("pos_embed", "cls_token", "positional_embedding", "mask_token"))
        (no_decay if p.ndim < 2 or is_embedding else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    # The fused kernel updates every tensor in one pass (CPU and CUDA): 4x faster than the
    # per-tensor loop on the small preset (bench: 99.5 -> 23.6 ms per step on 2 cores).
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), fused=True)
