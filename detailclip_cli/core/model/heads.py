"""The iBOT/DINO projection head: MLP -> L2-normalised bottleneck -> prototype logits."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from detailclip_cli.core.config import HeadConfig


class ProjectionHead(nn.Module):
    """Maps tokens (..., in_dim) to K prototype logits (..., out_dim).

    The last layer is weight-normalised with its gain fixed at 1, i.e. a cosine similarity
    between the normalised bottleneck and each normalised prototype; DINO found the fixed gain
    stabilises training.
    """

    def __init__(self, in_dim: int, cfg: HeadConfig):
        super().__init__()
        dims = [in_dim] + [cfg.hidden_dim] * (cfg.layers - 1) + [cfg.bottleneck_dim]
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
            layers.append(nn.Linear(a, b))
            if i < len(dims) - 2:
                layers.append(nn.GELU())
        self.mlp = nn.Sequential(*layers)
        self.prototypes = nn.Parameter(torch.empty(cfg.out_dim, cfg.bottleneck_dim))
        nn.init.trunc_normal_(self.prototypes, std=0.02)
        for m in self.mlp:
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., in_dim) -> (..., out_dim) logits."""
        z = F.normalize(self.mlp(x), dim=-1)
        return F.linear(z, F.normalize(self.prototypes, dim=-1))
