"""Convert an open_clip ViT CLIP model into a :class:`DetailCLIP`, exactly.

Our image tower uses timm's parameter names and can switch on CLIP's layout (``pre_norm`` for
``ln_pre``, LayerNorm eps 1e-5, QuickGELU, a bias-free patch embedding), and our text tower has
open_clip's ``TextTransformer`` parameter names (:mod:`detailclip_cli.core.model.text`), so a plain
open_clip ViT CLIP maps one-to-one:

=====================================================  ==============================================
open_clip                                              DetailCLIP
=====================================================  ==============================================
``visual.conv1``                                       ``visual.patch_embed.proj``
``visual.class_embedding`` (D,)                        ``visual.cls_token`` (1, 1, D)
``visual.positional_embedding`` (1 + L, D)             ``visual.pos_embed`` (1, 1 + L, D)
``visual.ln_pre``                                      ``visual.norm_pre``
``visual.transformer.resblocks.i.ln_1``                ``visual.blocks.i.norm1``
``visual.transformer.resblocks.i.attn.in_proj_*``      ``visual.blocks.i.attn.qkv``
``visual.transformer.resblocks.i.attn.out_proj``       ``visual.blocks.i.attn.proj``
``visual.transformer.resblocks.i.ln_2``                ``visual.blocks.i.norm2``
``visual.transformer.resblocks.i.mlp.c_fc / c_proj``   ``visual.blocks.i.mlp.fc1 / fc2``
``visual.ln_post``                                     ``visual.norm``
``visual.proj`` (D, E)                                 ``image_proj.weight`` (E, D), transposed
``token_embedding``, ``positional_embedding``,         ``text.*`` under the same names
``transformer``, ``ln_final``, ``text_projection``
``logit_scale``                                        ``logit_scale``
=====================================================  ==============================================

Anything that has no counterpart (ResNet or timm image towers, attentional pooling, average
pooling, layer scale, custom attention blocks, Hugging Face or other custom text towers) is
refused with a one-line :class:`ModelLoadError` naming the architecture, never converted
approximately. The same table, read right to left, writes our models back into open_clip
(:mod:`detailclip_cli.core.export`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from detailclip_cli.core.config import ModelConfig, TextConfig, VisionConfig
from detailclip_cli.core.model.detailclip import DetailCLIP
from detailclip_cli.core.store.io import ModelLoadError

OPEN_CLIP_PREFIX = "open_clip:"


def load_open_clip(name: str, pretrained: str | None = None, *, device: str | torch.device = "cpu"):
    """Build an open_clip model and convert it.

    Args:
        name: open_clip architecture name (``ViT-B-32``, or one registered with
            ``open_clip.add_model_config``).
        pretrained: an open_clip pretrained tag (downloaded into open_clip's cache) or a local
            checkpoint file (``.pt`` / ``.bin`` / ``.safetensors`` state dict); None leaves the
            weights random.
        device: where the converted model lives.

    Returns:
        A :class:`DetailCLIP` in eval mode, with no decoder and no head.

    Raises:
        ModelLoadError: unknown architecture, unloadable weights, or an architecture that does
            not map onto DetailCLIP.
    """
    import open_clip

    if name not in open_clip.list_models():
        raise ModelLoadError(
            f"unknown open_clip model {name!r} (open_clip.list_models() names the architectures)"
        )
    import logging
    import pickle

    try:
        # open_clip reads local .pt/.bin files with torch.load(weights_only=True): a pickle that
        # holds anything but tensors and containers is refused (UnpicklingError), never run.
        # open_clip also logs its failures on the root logger; the error below says it in one line.
        logging.disable(logging.ERROR)
        try:
            oc_model = open_clip.create_model(name, pretrained=pretrained or None, device="cpu")
        finally:
            logging.disable(logging.NOTSET)
    except (RuntimeError, OSError, ValueError, KeyError, pickle.UnpicklingError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        what = f" with pretrained={pretrained!r}" if pretrained else ""
        raise ModelLoadError(f"cannot load open_clip model {name!r}{what}: {first}") from None
    return from_open_clip(oc_model, name=name).to(device).eval()


def from_open_clip(oc_model: nn.Module, *, name: str = "open_clip model"):
    """Convert a built open_clip ``CLIP`` / ``CustomTextCLIP`` with a plain ViT tower.

    Args:
        oc_model: the open_clip model (weights are copied; the model is not modified).
        name: the architecture's name, for error messages.

    Returns:
        A :class:`DetailCLIP` (decoder=None, head=None) whose ``encode_image`` and
        ``encode_text`` equal the open_clip model's.
    """
    cfg = open_clip_config(oc_model, name=name)
    model = DetailCLIP(cfg)
    state = convert_state_dict(oc_model, num_blocks=cfg.vision.depth)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:  # a mapping bug, not a user error; say which keys
        raise ModelLoadError(
            f"{name}: converted weights do not fit DetailCLIP (missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    return model.eval()


def open_clip_config(oc_model: nn.Module, *, name: str = "open_clip model") -> ModelConfig:
    """Read a :class:`ModelConfig` off a built open_clip model, refusing what does not map."""
    from open_clip.transformer import ResidualAttentionBlock, TextTransformer, VisionTransformer

    def refuse(why: str) -> ModelLoadError:
        return ModelLoadError(f"open_clip model {name!r} cannot be converted: {why}")

    kind = type(oc_model).__name__
    if kind not in ("CLIP", "CustomTextCLIP"):
        raise refuse(f"{kind} models are not plain CLIP (image tower + causal text tower)")
    visual = oc_model.visual
    if not isinstance(visual, VisionTransformer):
        raise refuse(f"its image tower is a {type(visual).__name__}, not a ViT")
    if visual.attn_pool is not None:
        raise refuse("its image tower uses attentional pooling")
    if visual.pool_type != "tok":
        raise refuse(f"its image tower pools with {visual.pool_type!r}, not the [CLS] token ('tok')")
    if visual.proj is None:
        raise refuse("its image tower has no output projection")
    gh, gw = visual.grid_size
    (ph, pw), (ih, iw) = visual.patch_size, visual.image_size
    if ph != pw or ih != iw:
        raise refuse(f"non-square images or patches ({ih}x{iw} px, {ph}x{pw} patches)")
    blocks = list(visual.transformer.resblocks)
    _check_blocks(blocks, ResidualAttentionBlock, "image", refuse)
    width = visual.transformer.width

    if _has_text_module(oc_model) and not isinstance(oc_model.text, TextTransformer):
        raise refuse(f"its text tower is a {type(oc_model.text).__name__}, not open_clip's causal TextTransformer")
    text = _text_tower(oc_model)
    text_blocks = list(text["transformer"].resblocks)
    _check_blocks(text_blocks, ResidualAttentionBlock, "text", refuse)
    if text["pool_type"] != "argmax":
        raise refuse(f"its text tower pools with {text['pool_type']!r}, not 'argmax'")
    if text["attn_mask"] is None:
        raise refuse("its text tower has no causal mask")
    if not isinstance(text["text_projection"], nn.Parameter):
        raise refuse("its text projection is not a plain matrix (bias or none)")
    if text["cls_emb"] is not None:
        raise refuse("its text tower appends a [CLS] embedding (CoCa style)")
    text_width = text["transformer"].width
    text_mlp_ratio = text_blocks[0].mlp.c_fc.out_features / text_width
    if text_mlp_ratio != 4.0:
        raise refuse(f"its text MLP ratio is {text_mlp_ratio:g} (DetailCLIP's text tower uses 4)")
    text_eps = text["ln_final"].eps
    if text_eps != 1e-5:
        raise refuse(f"its text LayerNorm eps is {text_eps:g} (DetailCLIP's text tower uses 1e-5)")

    preprocess = _preprocess_cfg(oc_model)
    logit_scale = float(oc_model.logit_scale.detach().reshape(-1)[0])
    return ModelConfig(
        embed_dim=visual.proj.shape[1],
        vision=VisionConfig(
            image_size=ih,
            patch_size=ph,
            width=width,
            depth=len(blocks),
            heads=blocks[0].attn.num_heads,
            mlp_ratio=blocks[0].mlp.c_fc.out_features / width,
            mean=tuple(float(m) for m in preprocess["mean"]),
            std=tuple(float(s) for s in preprocess["std"]),
            pre_norm=not isinstance(visual.ln_pre, nn.Identity),
            norm_eps=float(visual.ln_post.eps),
            act=_act_name(blocks, refuse, "image"),
            patch_bias=visual.conv1.bias is not None,
        ),
        text=TextConfig(
            context_length=text["context_length"],
            vocab_size=text["vocab_size"],
            width=text_width,
            heads=text_blocks[0].attn.num_heads,
            layers=len(text_blocks),
            act=_act_name(text_blocks, refuse, "text"),
        ),
        decoder=None,
        head=None,
        init_logit_scale=logit_scale,
    )


def convert_state_dict(oc_model: nn.Module, *, num_blocks: int) -> dict[str, torch.Tensor]:
    """Rename (and reshape) an open_clip CLIP state dict into DetailCLIP's names, as fp32."""
    src = {k: v.detach().float() for k, v in oc_model.state_dict().items()}
    # Missing tensors (no ln_pre, a bias-free conv1) are simply absent; from_open_clip's strict
    # load names any that DetailCLIP needed.
    out = {ours: src[theirs] for theirs, ours in vision_key_pairs(num_blocks) if theirs in src}
    v = "visual."
    out["visual.cls_token"] = src[v + "class_embedding"].reshape(1, 1, -1)  # (D,) -> (1, 1, D)
    out["visual.pos_embed"] = src[v + "positional_embedding"].unsqueeze(0)  # (1+L, D) -> (1, 1+L, D)
    out["image_proj.weight"] = src[v + "proj"].T.contiguous()  # (D, E) -> (E, D)

    # The text tower has open_clip's parameter names: only the prefix changes.
    text_prefix = "text." if _has_text_module(oc_model) else ""
    for key, value in src.items():
        if key.startswith(text_prefix) and key[len(text_prefix):].startswith(TEXT_KEYS):
            out["text." + key[len(text_prefix):]] = value
    out["logit_scale"] = src["logit_scale"].reshape(())  # (1,) in some configs -> scalar
    return out


# The text tower's tensors (open_clip's TextTransformer) by their leading names.
TEXT_KEYS = ("token_embedding.", "positional_embedding", "transformer.", "ln_final.", "text_projection")

# Block sub-modules: open_clip's ResidualAttentionBlock name -> our (timm's) Block name.
_BLOCK_NAMES = {
    "ln_1": "norm1", "attn.in_proj": "attn.qkv", "attn.out_proj": "attn.proj",
    "ln_2": "norm2", "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2",
}


def vision_key_pairs(num_blocks: int) -> list[tuple[str, str]]:
    """(open_clip name, DetailCLIP name) of every image-tower tensor that is renamed unchanged.

    The tensors that change shape on the way (class and position embeddings, the output
    projection) are not listed; ``conv1.bias`` and ``ln_pre`` are, though not every model has them.
    """
    pairs = [("visual.conv1.weight", "visual.patch_embed.proj.weight"),
             ("visual.conv1.bias", "visual.patch_embed.proj.bias")]
    for part in ("weight", "bias"):
        pairs += [(f"visual.ln_pre.{part}", f"visual.norm_pre.{part}"), (f"visual.ln_post.{part}", f"visual.norm.{part}")]
    for i in range(num_blocks):
        for theirs, ours in _BLOCK_NAMES.items():
            # nn.MultiheadAttention names its fused projection in_proj_weight / in_proj_bias;
            # its rows are [q; k; v], each head-major, which is exactly our qkv layout.
            sep = "_" if theirs == "attn.in_proj" else "."
            pairs += [(f"visual.transformer.resblocks.{i}.{theirs}{sep}{part}", f"visual.blocks.{i}.{ours}.{part}")
                      for part in ("weight", "bias")]
    return pairs


def open_clip_name(spec: str) -> str | None:
    """``"open_clip:ViT-B-32"`` -> ``"ViT-B-32"``; None for any other model spec."""
    if spec.startswith(OPEN_CLIP_PREFIX):
        return spec[len(OPEN_CLIP_PREFIX):]
    return None


# -- helpers -------------------------------------------------------------------------------------


def _has_text_module(oc_model: nn.Module) -> bool:
    return isinstance(getattr(oc_model, "text", None), nn.Module)


def _text_tower(oc_model: nn.Module) -> dict[str, Any]:
    """The text tower's parts, from ``CustomTextCLIP.text`` or ``CLIP``'s top-level attributes."""
    if _has_text_module(oc_model):
        text = oc_model.text
        src, pool, mask, cls_emb = text, text.pool_type, text.attn_mask, text.cls_emb
    else:
        src, pool, mask, cls_emb = oc_model, getattr(oc_model, "text_pool_type", None), oc_model.attn_mask, None
    return {
        "transformer": src.transformer,
        "ln_final": src.ln_final,
        "text_projection": src.text_projection,
        "context_length": src.context_length,
        "vocab_size": src.vocab_size,
        "pool_type": pool,
        "attn_mask": mask,
        "cls_emb": cls_emb,
    }


def _check_blocks(blocks: list[nn.Module], block_cls: type, tower: str, refuse) -> None:
    if not blocks:
        raise refuse(f"its {tower} tower has no transformer blocks")
    for blk in blocks:
        if type(blk) is not block_cls:
            raise refuse(f"its {tower} tower uses {type(blk).__name__} blocks (custom attention)")
        if not isinstance(blk.ls_1, nn.Identity) or not isinstance(blk.ls_2, nn.Identity):
            raise refuse(f"its {tower} tower uses layer scale")
        if blk.attn.in_proj_bias is None or blk.attn.in_proj_weight is None:
            raise refuse(f"its {tower} attention has no fused, biased q/k/v projection")
        if hasattr(blk, "ln_1_kv"):
            raise refuse(f"its {tower} tower uses cross-attention")
    eps = {blk.ln_1.eps for blk in blocks} | {blk.ln_2.eps for blk in blocks}
    if len(eps) > 1:
        raise refuse(f"its {tower} tower mixes LayerNorm eps values {sorted(eps)}")


def _act_name(blocks: list[nn.Module], refuse, tower: str) -> str:
    """``quick_gelu`` or ``gelu`` from the blocks' activation modules (OpenAI weights use QuickGELU)."""
    names = set()
    for blk in blocks:
        act = blk.mlp.gelu
        cls = type(act).__name__
        if cls == "QuickGELU":
            names.add("quick_gelu")
        elif isinstance(act, nn.GELU) and act.approximate == "none":
            names.add("gelu")
        else:
            detail = f"{cls}(approximate={act.approximate!r})" if isinstance(act, nn.GELU) else cls
            raise refuse(f"its {tower} tower uses the activation {detail}")
    if len(names) > 1:
        raise refuse(f"its {tower} tower mixes activations")
    return names.pop()


def _preprocess_cfg(oc_model: nn.Module) -> dict[str, Any]:
    """The image mean/std the model was trained with, from open_clip's preprocess config."""
    from open_clip import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

    visual = oc_model.visual
    cfg = dict(getattr(visual, "preprocess_cfg", None) or {})
    cfg.setdefault("mean", getattr(visual, "image_mean", None) or OPENAI_DATASET_MEAN)
    cfg.setdefault("std", getattr(visual, "image_std", None) or OPENAI_DATASET_STD)
    return cfg
