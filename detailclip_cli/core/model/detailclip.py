"""The DetailCLIP model: image tower, text tower, projections, pixel decoder, distillation head.

Shape letters: B batch, L patch tokens, K kept tokens, D vision width, E embedding width,
T text context.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from detailclip_cli.core.config import ModelConfig
from detailclip_cli.core.model.decoder import PixelDecoder
from detailclip_cli.core.model.heads import ProjectionHead
from detailclip_cli.core.model.text import TextTransformer
from detailclip_cli.core.model.tokenizer import clip_tokenizer
from detailclip_cli.core.model.vit import VisionTransformer


class DetailCLIP(nn.Module):
    """A CLIP model whose image tower also carries the DetailCLIP decoder and head.

    Attributes:
        visual: the ViT image tower.
        image_proj: linear map of the image [CLS] token into the shared embedding.
        text: the causal text tower, open_clip's ``TextTransformer`` layout and parameter names
            (:mod:`.text`; its ``text_projection`` maps into E).
        logit_scale: learned log temperature; used as ``exp`` clamped to ``max_logit_scale``.
        decoder: the pixel decoder, or None when reconstruction is off.
        head: the iBOT projection head, or None when distillation is off.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        v = cfg.vision
        self.visual = VisionTransformer(v)
        self.image_proj = nn.Linear(v.width, cfg.embed_dim, bias=False)
        nn.init.normal_(self.image_proj.weight, std=v.width ** -0.5)
        self.text = TextTransformer(cfg.text, output_dim=cfg.embed_dim)
        self.logit_scale = nn.Parameter(torch.tensor(float(cfg.init_logit_scale)))
        self.decoder = None
        if cfg.decoder is not None:
            self.decoder = PixelDecoder(
                cfg.decoder, in_width=v.width, grid=v.grid_size, patch_size=v.patch_size,
                feature_width=v.width if cfg.head is not None else None,
            )
        self.head = ProjectionHead(v.width, cfg.head) if cfg.head is not None else None

    # -- the CLIP half -------------------------------------------------------------------------

    def embed_cls(self, tokens: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """(B, 1 + K, D) encoder tokens -> (B, E) image embedding from the [CLS] token."""
        x = self.image_proj(tokens[:, 0])
        return F.normalize(x, dim=-1) if normalize else x

    def encode_image(self, images: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """(B, 3, H, W) normalised pixels -> (B, E) image embeddings."""
        # Only [CLS] is read, so the last block runs for it alone (forward_cls: a fifth less work at depth 4).
        return self.embed_cls(self.visual.forward_cls(images)[:, None], normalize)  # (B, D) -> (B, 1, D)

    def encode_text(self, text: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """(B, T) token ids -> (B, E) text embeddings."""
        x = self.text(text)
        return F.normalize(x, dim=-1) if normalize else x

    def scale(self) -> torch.Tensor:
        """The contrastive logit scale: exp(logit_scale) clamped to at most ``max_logit_scale``."""
        return self.logit_scale.exp().clamp(max=self.cfg.max_logit_scale)

    @property
    def tokenizer(self):
        """CLIP's BPE tokenizer at this model's context length: ``tokenizer(list[str]) -> (B, T)``
        (equal to open_clip's ``SimpleTokenizer``; the vocabulary is read on first use)."""
        return clip_tokenizer(self.cfg.text.context_length)

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        """N texts -> (N, T) token ids."""
        return self.tokenizer(texts)

    # -- the image tower as the teacher copies it -----------------------------------------------

    def image_tower(self) -> nn.ModuleDict:
        """The modules an EMA teacher mirrors: the ViT and (if present) the distillation head."""
        parts = {"visual": self.visual}
        if self.head is not None:
            parts["head"] = self.head
        return nn.ModuleDict(parts)

    def num_params(self) -> dict[str, int]:
        """Parameter counts per part and in total."""
        parts = {"visual": self.visual, "image_proj": self.image_proj, "text": self.text,
                 "decoder": self.decoder, "head": self.head}
        counts = {k: sum(p.numel() for p in m.parameters()) for k, m in parts.items() if m is not None}
        counts["total"] = sum(p.numel() for p in self.parameters())
        return counts
