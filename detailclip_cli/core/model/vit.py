"""A Vision Transformer that encodes any subset of its patch tokens and reports its attention.

Parameter names follow timm's ``VisionTransformer`` (``patch_embed.proj``, ``cls_token``,
``pos_embed``, ``blocks.N.attn.qkv`` ...) so the image tower maps one-to-one onto timm and
open_clip layouts. Attention is an output: every block can return its [CLS]-to-patch attention
row, computed directly from the block's own q and k (one row, not the L x L matrix), while the
block's output still comes from the fused ``scaled_dot_product_attention`` kernel.

Shape letters: B batch, L patch tokens, K kept tokens, N tokens in the sequence (1 + L or 1 + K),
D width, H heads, P patch size.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from detailclip_cli.core.config import VisionConfig


class Attention(nn.Module):
    """Multi-head self-attention that can also return the [CLS] token's attention row."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.head_dim = dim // heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, return_cls_attn: bool = False):
        """
        Args:
            x: (B, N, D) tokens, [CLS] first.
            return_cls_attn: also return the [CLS] query's attention over all N tokens.

        Returns:
            (B, N, D), and (B, H, N) softmax weights of the [CLS] row when asked, else None.
        """
        b, n, d = x.shape
        # Split along the q/k/v axis of the (B, N, 3, H, hd) view, then move H forward: the same
        # strided views as a permute, but the backward stacks the three gradients straight into
        # that contiguous layout, where a permute's would need one more copy.
        qkv = self.qkv(x).view(b, n, 3, self.heads, self.head_dim).unbind(2)
        q, k, v = (t.transpose(1, 2) for t in qkv)  # each (B, H, N, hd)
        out = F.scaled_dot_product_attention(q, k, v)  # (B, H, N, hd)
        out = self.proj(out.transpose(1, 2).reshape(b, n, d))
        cls_attn = None
        if return_cls_attn:
            # Only the [CLS] row: (B, H, 1, hd) @ (B, H, hd, N) -> (B, H, N); O(N) not O(N^2).
            logits = (q[:, :, 0:1] @ k.transpose(-2, -1)).squeeze(2) / math.sqrt(self.head_dim)
            cls_attn = logits.float().softmax(dim=-1)
        return out, cls_attn

    def forward_cls(self, x: torch.Tensor) -> torch.Tensor:
        """The attention output at [CLS] alone: its query against every token's key and value.

        Args:
            x: (B, N, D) tokens, [CLS] first.

        Returns:
            (B, 1, D), :meth:`forward`'s output at position 0 (up to float rounding), with the
            query and output projections computed for one token instead of N.
        """
        b, n, d = x.shape
        w, bias = self.qkv.weight, self.qkv.bias  # (3D, D), (3D,): the q, k and v rows in turn
        q = F.linear(x[:, :1], w[:d], bias[:d]).reshape(b, 1, self.heads, self.head_dim).transpose(1, 2)  # (B, H, 1, hd)
        kv = F.linear(x, w[d:], bias[d:]).reshape(b, n, 2, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, kv[0], kv[1])  # (B, H, 1, hd)
        return self.proj(out.transpose(1, 2).reshape(b, 1, d))


class QuickGELU(nn.Module):
    """x * sigmoid(1.702 x): the activation OpenAI's CLIP weights were trained with."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


def make_act(name: str) -> nn.Module:
    return QuickGELU() if name == "quick_gelu" else nn.GELU()


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, act: str = "gelu"):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = make_act(act)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0, *, eps: float = 1e-6, act: str = "gelu"):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act)

    def forward(self, x: torch.Tensor, return_cls_attn: bool = False):
        """(B, N, D) -> (B, N, D), plus (B, H, N) [CLS] attention when asked (else None)."""
        a, cls_attn = self.attn(self.norm1(x), return_cls_attn)
        x = x + a
        x = x + self.mlp(self.norm2(x))
        return x, cls_attn

    def forward_cls(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, D) -> (B, 1, D): the block's output at [CLS] alone, for a last block whose patch
        outputs nothing reads (an image embedding); equal to :meth:`forward`'s up to rounding."""
        x = x[:, :1] + self.attn.forward_cls(self.norm1(x))  # (B, 1, D)
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
    def __init__(self, patch_size: int, width: int, bias: bool = True):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(3, width, kernel_size=patch_size, stride=patch_size, bias=bias)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, L, D) in row-major grid order."""
        return self.proj(images).flatten(2).transpose(1, 2)


class ChannelNorm(nn.LayerNorm):
    """LayerNorm over the channels of each pixel of a (B, C, H, W) map (ConvNeXt's)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class ConvStem(nn.Module):
    """Stride-2 3x3 convolutions (channel LayerNorm, GELU) from pixels to the patch grid, then a
    1x1 projection to the token width. Channels double per stage, ending at ``width / 2``. The
    norm is per pixel, not BatchNorm or GroupNorm: a token depends only on the pixels in its
    receptive field, never on the rest of the image or of the batch, so the teacher, the
    student and inference compute the same function."""

    def __init__(self, patch_size: int, width: int, bias: bool = True):
        super().__init__()
        self.patch_size = patch_size
        stages = patch_size.bit_length() - 1  # log2(patch_size)
        layers, c_in = [], 3
        for i in range(stages):
            c_out = max(8, width >> (stages - i))
            layers += [
                nn.Conv2d(c_in, c_out, 3, stride=2, padding=1, bias=False),
                ChannelNorm(c_out, eps=1e-6),
                nn.GELU(),
            ]
            c_in = c_out
        self.body = nn.Sequential(*layers)
        self.proj = nn.Conv2d(c_in, width, 1, bias=bias)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, L, D) in row-major grid order."""
        return self.proj(self.body(images)).flatten(2).transpose(1, 2)


class VisionTransformer(nn.Module):
    """ViT image tower: patch embedding, [CLS], learned position embedding, blocks, final norm."""

    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.cfg = cfg
        self.patch_size = cfg.patch_size
        self.grid_size = cfg.grid_size
        self.width = cfg.width
        stem = ConvStem if cfg.stem == "conv" else PatchEmbed
        self.patch_embed = stem(cfg.patch_size, cfg.width, cfg.patch_bias)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.width))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + cfg.num_patches, cfg.width))
        self.norm_pre = nn.LayerNorm(cfg.width, eps=cfg.norm_eps) if cfg.pre_norm else nn.Identity()
        self.blocks = nn.ModuleList(
            Block(cfg.width, cfg.heads, cfg.mlp_ratio, eps=cfg.norm_eps, act=cfg.act) for _ in range(cfg.depth)
        )
        self.norm = nn.LayerNorm(cfg.width, eps=cfg.norm_eps)
        self.grad_checkpointing = False
        self._init_weights()

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block's activations in the backward instead of keeping them (timm's name)."""
        self.grad_checkpointing = enable

    def _init_weights(self) -> None:
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        w = self.patch_embed.proj.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))  # as a linear layer, like MAE
        for m in self.blocks.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    @property
    def depth(self) -> int:
        return len(self.blocks)

    def embed_patches(self, images: torch.Tensor, *, interpolate_pos: bool = False) -> torch.Tensor:
        """Patch tokens with their position embedding, before any removal.

        Args:
            images: (B, 3, H, W) with H, W the configured image size, or any multiple of the
                patch size when ``interpolate_pos`` is set.
            interpolate_pos: accept another grid (e.g. DINO's small local crops) and resample
                the position embedding to it with :meth:`patch_pos_embed`.

        Returns:
            (B, L, D), L = (H / P) * (W / P).
        """
        h, w = images.shape[-2:]
        grid = (h // self.patch_size, w // self.patch_size)
        if grid != self.grid_size and not interpolate_pos:
            raise ValueError(
                f"images are {h}x{w} px but the model expects "
                f"{self.grid_size[0] * self.patch_size}x{self.grid_size[1] * self.patch_size}"
            )
        return self.patch_embed(images) + self.patch_pos_embed(grid)

    def patch_pos_embed(self, grid: tuple[int, int]) -> torch.Tensor:
        """The patch position embedding for a (gh, gw) grid, (1, gh * gw, D).

        The learned table itself on the configured grid; on another grid, the table resampled
        bicubically as a (D, gh, gw) image, so a smaller crop sees the same positions more
        coarsely (DINO's ``interpolate_pos_encoding``). Gradients reach the learned table.
        """
        table = self.pos_embed[:, 1:]  # (1, L, D)
        if tuple(grid) == self.grid_size:
            return table
        gh, gw = self.grid_size
        image = table.reshape(1, gh, gw, self.width).permute(0, 3, 1, 2)  # (1, L, D) -> (1, D, gh, gw)
        image = F.interpolate(image, size=tuple(grid), mode="bicubic", align_corners=False)
        return image.permute(0, 2, 3, 1).reshape(1, grid[0] * grid[1], self.width)  # -> (1, L', D)

    def forward_tokens(self, patches: torch.Tensor, return_cls_attn: bool = False):
        """Run the transformer over [CLS] plus the given (possibly subset of) patch tokens.

        Args:
            patches: (B, K, D) position-embedded patch tokens, any K <= L.
            return_cls_attn: also collect every block's [CLS] attention row.

        Returns:
            (B, 1 + K, D) normalised tokens, [CLS] first, and a list of ``depth`` tensors
            (B, H, 1 + K) with each block's [CLS] attention (empty when not asked).
        """
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(patches.shape[0], -1, -1)
        # Per-token norm: applying it to the kept subset equals applying it to the full sequence.
        x = self.norm_pre(torch.cat([cls, patches], dim=1))  # (B, 1 + K, D)
        attns = []
        checkpointed = self.grad_checkpointing and torch.is_grad_enabled()
        for blk in self.blocks:
            if checkpointed:
                x, a = checkpoint(blk, x, return_cls_attn, use_reentrant=False)
            else:
                x, a = blk(x, return_cls_attn)
            if return_cls_attn:
                attns.append(a)
        return self.norm(x), attns

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, 1 + L, D) tokens of the full image."""
        x, _ = self.forward_tokens(self.embed_patches(images))
        return x

    def forward_cls(self, images: torch.Tensor, *, interpolate_pos: bool = False) -> torch.Tensor:
        """The normalised [CLS] token of full images, for inference (an image embedding reads
        nothing else).

        Every block but the last runs as in :meth:`forward`; the last one only for [CLS] (its
        keys and values still come from every token), which saves most of a block: about a
        fifth of a 4-block tower's work. Equal to ``forward(images)[:, 0]`` up to float rounding.

        Args:
            images: (B, 3, H, W); another grid than the configured one with ``interpolate_pos``
                (see :meth:`embed_patches`).

        Returns:
            (B, D).
        """
        patches = self.embed_patches(images, interpolate_pos=interpolate_pos)  # (B, L, D)
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(patches.shape[0], -1, -1)
        x = self.norm_pre(torch.cat([cls, patches], dim=1))  # (B, 1 + L, D)
        for blk in list(self.blocks)[:-1]:
            x, _ = blk(x)
        return self.norm(self.blocks[-1].forward_cls(x))[:, 0]  # (B, 1, D) -> (B, D)

    def forward_with_scores(self, images: torch.Tensor, layer: str | int = "mean"):
        """Encode full images and score each patch by the [CLS] token's attention to it.

        Args:
            images: (B, 3, H, W).
            layer: ``"mean"`` (average over all blocks, the authors' choice), ``"last"``, or a
                block index.

        Returns:
            tokens (B, 1 + L, D) and scores (B, L) (mean over heads).
        """
        tokens, attns = self.forward_tokens(self.embed_patches(images), return_cls_attn=True)
        per_layer = torch.stack(attns, dim=1)[..., 1:]  # (B, depth, H, L): drop [CLS]->[CLS]
        return tokens, reduce_cls_attention(per_layer, layer).mean(dim=1)

    def cls_attention(self, images: torch.Tensor) -> torch.Tensor:
        """Every block's [CLS]-to-patch attention, (B, depth, H, L): the raw maps for pictures."""
        _, attns = self.forward_tokens(self.embed_patches(images), return_cls_attn=True)
        return torch.stack(attns, dim=1)[..., 1:]


def reduce_cls_attention(per_layer: torch.Tensor, layer: str | int = "mean") -> torch.Tensor:
    """Pick or average layers of a (B, depth, H, L) attention stack -> (B, H, L)."""
    if layer == "mean":
        return per_layer.mean(dim=1)
    if layer == "last":
        return per_layer[:, -1]
    index = int(layer)
    depth = per_layer.shape[1]
    if not -depth <= index < depth:
        raise ValueError(f"layer {index} is out of range for a {depth}-block model")
    return per_layer[:, index]
