"""The causal text tower: open_clip's ``TextTransformer`` layout, our own module.

Parameter names and shapes are open_clip's (``token_embedding``, ``positional_embedding``,
``transformer.resblocks.N.{ln_1, attn.in_proj_weight, attn.in_proj_bias, attn.out_proj, ln_2,
mlp.c_fc, mlp.c_proj}``, ``ln_final``, ``text_projection``), so its weights load into open_clip
and back unchanged, and a fresh tower draws its initial weights in open_clip's order (the same
seed gives the same tensors). Owning the module keeps ``import open_clip`` (and the torchvision
model zoo it pulls in) out of every command that only reads text.

Differences from open_clip, none of which changes a result beyond float rounding: attention
is one fused ``scaled_dot_product_attention`` call with ``is_causal=True`` instead of
``nn.MultiheadAttention`` with an additive ``-inf`` mask; only plain CLIP towers exist (argmax
pooling, a bias-free projection matrix, no layer scale, no [CLS] embedding).

Shape letters: B batch, T text context, W text width, E embedding width, H heads.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from detailclip_cli.core.config import TextConfig
from detailclip_cli.core.model.vit import make_act


class LayerNorm(nn.LayerNorm):
    """LayerNorm whose output keeps the input's dtype (open_clip's: under autocast
    ``layer_norm`` returns float32, which would otherwise leak into a bf16 stream)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps).to(x.dtype)


class CausalSelfAttention(nn.Module):
    """Causal multi-head self-attention with ``nn.MultiheadAttention``'s parameter names.

    ``in_proj_weight`` (3W, W) stacks the q, k and v projections, each head-major, exactly as
    ``nn.MultiheadAttention`` stores them.
    """

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.empty(3 * width))
        self.out_proj = nn.Linear(width, width)
        # nn.MultiheadAttention's initialisation, in its order, so a seeded build draws the same
        # random numbers as open_clip's tower (and every module built after it does too).
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.in_proj_bias)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, W) -> (B, T, W); token t attends to tokens 0..t."""
        b, t, w = x.shape
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)  # (B, T, 3W)
        qkv = qkv.reshape(b, t, 3, self.heads, w // self.heads).permute(2, 0, 3, 1, 4)  # (3, B, H, T, W/H)
        q, k, v = qkv.unbind(0)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, H, T, W/H)
        return self.out_proj(out.transpose(1, 2).reshape(b, t, w))  # (B, H, T, W/H) -> (B, T, W)


class TextBlock(nn.Module):
    """Pre-norm residual block (open_clip's ``ResidualAttentionBlock`` without layer scale)."""

    def __init__(self, width: int, heads: int, *, mlp_ratio: float = 4.0, act: str = "gelu"):
        super().__init__()
        hidden = int(width * mlp_ratio)
        self.ln_1 = LayerNorm(width)
        self.attn = CausalSelfAttention(width, heads)
        self.ln_2 = LayerNorm(width)
        self.mlp = nn.Sequential()  # named children, as open_clip's OrderedDict Sequential
        self.mlp.add_module("c_fc", nn.Linear(width, hidden))
        self.mlp.add_module("gelu", make_act(act))
        self.mlp.add_module("c_proj", nn.Linear(hidden, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, W) -> (B, T, W)."""
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class TextStack(nn.Module):
    """The blocks, under open_clip's ``transformer.resblocks`` names."""

    def __init__(self, width: int, layers: int, heads: int, *, act: str):
        super().__init__()
        self.width, self.layers = width, layers
        self.grad_checkpointing = False
        self.resblocks = nn.ModuleList([TextBlock(width, heads, act=act) for _ in range(layers)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.resblocks:
            if self.grad_checkpointing and torch.is_grad_enabled():
                from torch.utils.checkpoint import checkpoint

                x = checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        return x


class TextTransformer(nn.Module):
    """Token ids to one embedding per text, read at the end-of-text token.

    Attributes:
        context_length: T, the tokenizer's padded length.
        token_embedding: (vocab, W). positional_embedding: (T, W).
        transformer: the causal blocks. ln_final: the last norm.
        text_projection: (W, E), applied as ``x @ text_projection``.
    """

    def __init__(self, cfg: TextConfig, *, output_dim: int):
        super().__init__()
        self.context_length, self.vocab_size = cfg.context_length, cfg.vocab_size
        self.width, self.heads = cfg.width, cfg.heads
        self.token_embedding = nn.Embedding(cfg.vocab_size, cfg.width)
        self.positional_embedding = nn.Parameter(torch.empty(cfg.context_length, cfg.width))
        self.transformer = TextStack(cfg.width, cfg.layers, cfg.heads, act=cfg.act)
        self.ln_final = LayerNorm(cfg.width)
        self.text_projection = nn.Parameter(torch.empty(cfg.width, output_dim))
        self._init_weights()

    def _init_weights(self) -> None:
        """open_clip's ``TextTransformer.init_parameters``, in its order (same seed, same weights)."""
        width, layers = self.width, len(self.transformer.resblocks)
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        proj_std = width ** -0.5 * (2 * layers) ** -0.5
        for block in self.transformer.resblocks:
            nn.init.normal_(block.attn.in_proj_weight, std=width ** -0.5)
            nn.init.normal_(block.attn.out_proj.weight, std=proj_std)
            nn.init.normal_(block.mlp.c_fc.weight, std=(2 * width) ** -0.5)
            nn.init.normal_(block.mlp.c_proj.weight, std=proj_std)
        nn.init.normal_(self.text_projection, std=width ** -0.5)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.transformer.grad_checkpointing = enable

    def forward(self, text: torch.Tensor) -> torch.Tensor:
        """(B, T) token ids -> (B, E) unnormalised text embeddings.

        Each text is read at its end-of-text token, the highest id in its row (CLIP's argmax
        pooling).
        """
        t = text.shape[1]
        x = self.token_embedding(text) + self.positional_embedding[:t]  # (B, T, W)
        x = self.ln_final(self.transformer(x))  # (B, T, W)
        eot = text.argmax(dim=-1)  # (B,)
        pooled = x[torch.arange(x.shape[0], device=x.device), eot]  # (B, T, W) -> (B, W)
        return pooled @ self.text_projection  # (B, E)
