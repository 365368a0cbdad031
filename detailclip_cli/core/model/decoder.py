"""The MAE-style pixel decoder: fills removed positions with a mask token and predicts pixels.

Shape letters: B batch, L patch tokens, K kept tokens, D width, P patch size.
"""

from __future__ import annotations

import torch
from torch import nn

from detailclip_cli.core.config import DecoderConfig
from detailclip_cli.core.model.removal import restore_tokens
from detailclip_cli.core.model.vit import Block


def sincos_pos_embed_2d(grid: tuple[int, int], dim: int) -> torch.Tensor:
    """Fixed 2-D sine-cosine position embedding for a (gh, gw) grid, plus a zero row for [CLS].

    Half the channels encode the row, half the column; each half is sin and cos of the position
    at ``dim / 4`` geometrically spaced frequencies.

    Returns:
        (1 + gh * gw, dim).
    """
    if dim % 4:
        raise ValueError(f"sin-cos position embedding needs a width divisible by 4, got {dim}")
    gh, gw = grid
    freqs = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim // 4))  # (dim/4,)
    rows, cols = torch.meshgrid(
        torch.arange(gh, dtype=torch.float64), torch.arange(gw, dtype=torch.float64), indexing="ij"
    )

    def encode(pos: torch.Tensor) -> torch.Tensor:
        angles = pos.reshape(-1, 1) * freqs  # (L, dim/4)
        return torch.cat([angles.sin(), angles.cos()], dim=1)  # (L, dim/2)

    table = torch.cat([encode(rows), encode(cols)], dim=1)  # (L, dim)
    return torch.cat([torch.zeros(1, dim, dtype=torch.float64), table]).float()


class PixelDecoder(nn.Module):
    """Light transformer decoder over the full grid (kept tokens + mask tokens).

    Args:
        cfg: decoder width, depth, heads.
        in_width: width of the encoder's tokens.
        grid: (gh, gw) patch grid.
        patch_size: P; the head predicts P * P * 3 values per patch.
        feature_width: when set, the decoder's tokens are also features at this width (the
            distillation head reads them, so removed positions are predicted from context): the
            tokens themselves when the decoder is this wide (the authors' shape), else through a
            linear bridge ``to_features``; None when unused.
    """

    def __init__(self, cfg: DecoderConfig, *, in_width: int, grid: tuple[int, int], patch_size: int,
                 feature_width: int | None = None):
        super().__init__()
        self.embed = nn.Linear(in_width, cfg.width)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, cfg.width))
        self.register_buffer("pos_embed", sincos_pos_embed_2d(grid, cfg.width).unsqueeze(0), persistent=False)
        self.blocks = nn.ModuleList(Block(cfg.width, cfg.heads, cfg.mlp_ratio) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(cfg.width, eps=1e-6)
        self.pred = nn.Linear(cfg.width, patch_size * patch_size * 3)
        self.has_features = feature_width is not None
        bridged = self.has_features and feature_width != cfg.width
        self.to_features = nn.Linear(cfg.width, feature_width) if bridged else None
        nn.init.normal_(self.mask_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, latent: torch.Tensor, ids_restore: torch.Tensor):
        """
        Args:
            latent: (B, 1 + K, D_enc) encoder output, [CLS] first.
            ids_restore: (B, L) from the removal that produced the kept tokens.

        Returns:
            pred (B, L, P*P*3) pixel predictions and features (B, 1 + L, feature_width) or None.
        """
        x = self.embed(latent)  # (B, 1 + K, Dd)
        patches = restore_tokens(x[:, 1:], ids_restore, self.mask_token)  # (B, L, Dd)
        x = torch.cat([x[:, :1], patches], dim=1) + self.pos_embed  # (B, 1 + L, Dd)
        for blk in self.blocks:
            x, _ = blk(x)
        x = self.norm(x)
        pred = self.pred(x[:, 1:])  # (B, L, P*P*3)
        features = None
        if self.has_features:
            features = self.to_features(x) if self.to_features is not None else x  # (B, 1 + L, D_enc)
        return pred, features
