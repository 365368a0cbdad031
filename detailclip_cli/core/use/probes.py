"""Looking inside a model: [CLS] attention maps with the tokens they keep, and reconstructions."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from detailclip_cli.core.choices import PROBE_REMOVALS, ScoreLayer, one_of
from detailclip_cli.core.method.losses import normalize_patches, patchify, unpatchify
from detailclip_cli.core.model.removal import random_scores, remove_tokens
from detailclip_cli.core.model.vit import reduce_cls_attention
from detailclip_cli.core.use.batching import to_pixels
from detailclip_cli.errors import UsageError


@dataclass
class AttentionMaps:
    """The [CLS]-to-patch attention the model uses to choose tokens, and the removal it gives.

    Attributes:
        per_head: (B, H, gh, gw) the chosen layer(s)' attention per head.
        scores: (B, gh, gw) the removal scores (mean over heads), exactly as pretraining uses them.
        removed: (B, gh, gw) bool, True where :func:`remove_tokens` drops the patch.
    """

    per_head: torch.Tensor
    scores: torch.Tensor
    removed: torch.Tensor


def check_removal(model, keep_ratio: float, block_size: int) -> None:
    """Raise a one-line UsageError when ``keep_ratio`` / ``block_size`` do not fit the model."""
    if not 0.0 < keep_ratio <= 1.0:
        raise UsageError(f"--keep-ratio must be in (0, 1], got {keep_ratio}")
    gh, gw = model.visual.grid_size
    if block_size < 1 or gh % block_size or gw % block_size:
        raise UsageError(f"--block-size {block_size} does not divide the model's {gh}x{gw} patch grid")


def default_block_size(model, preferred: int = 2) -> int:
    """``preferred`` when it divides the patch grid, else 1."""
    gh, gw = model.visual.grid_size
    return preferred if preferred >= 1 and gh % preferred == 0 and gw % preferred == 0 else 1


def check_layer(model, layer: str | int) -> str | int:
    """Validate a ``mean`` / ``last`` / index layer choice against the model's depth."""
    if layer in tuple(ScoreLayer):
        return layer
    try:
        index = int(layer)
    except (TypeError, ValueError):
        raise UsageError(f"--layer must be {', '.join(ScoreLayer)} or a block index, not {layer!r}") from None
    depth = model.visual.depth
    if not -depth <= index < depth:
        raise UsageError(f"--layer {index} is out of range for a {depth}-block model")
    return index


@torch.no_grad()
def attention_maps(model, images: torch.Tensor, *, layer: str | int = "mean", keep_ratio: float = 0.5,
                   block_size: int = 1) -> AttentionMaps:
    """[CLS] attention maps and the token removal they produce, as in pretraining.

    Scores come from ``visual.cls_attention`` reduced with ``reduce_cls_attention`` and averaged
    over heads (what ``forward_with_scores`` gives the objective), and the mask is
    ``remove_tokens`` at ``keep_ratio`` / ``block_size``: the picture is the map that chooses.

    Args:
        model: a :class:`DetailCLIP`.
        images: (B, 3, S, S) normalised images.
        layer: ``mean`` over blocks, ``last``, or a block index.
        keep_ratio: fraction of patches kept.
        block_size: removal decides per block_size x block_size patch block.
    """
    visual = model.visual
    gh, gw = visual.grid_size
    per_layer = visual.cls_attention(images)  # (B, depth, H, L)
    per_head = reduce_cls_attention(per_layer, layer)  # (B, H, L)
    scores = per_head.mean(dim=1)  # (B, L)
    patches = visual.embed_patches(images)  # (B, L, D)
    removal = remove_tokens(patches, scores, keep_ratio, grid=(gh, gw), block_size=block_size)
    b, h = per_head.shape[:2]
    return AttentionMaps(
        per_head=per_head.reshape(b, h, gh, gw),  # (B, H, L) -> (B, H, gh, gw)
        scores=scores.reshape(b, gh, gw),
        removed=removal.mask.reshape(b, gh, gw),
    )


@dataclass
class Reconstruction:
    """Decoder output mapped back to pixels, with the panels people look at.

    All images are (B, 3, S, S) pixels in [0, 1].

    Attributes:
        original: the model's view of the input.
        kept: the original with removed patches greyed out.
        pred: the decoder's prediction for every patch, from the kept tokens.
        pasted: the prediction at removed patches, the original at kept ones.
        removed: (B, gh, gw) bool, True where the patch was removed.
        mse: (B,) mean squared error on removed patches, in [0, 1] pixel units.
        psnr: (B,) 10 log10(1 / mse), in dB.
    """

    original: torch.Tensor
    kept: torch.Tensor
    pred: torch.Tensor
    pasted: torch.Tensor
    removed: torch.Tensor
    mse: torch.Tensor
    psnr: torch.Tensor


class NoDecoderError(UsageError):
    """The model has no pixel decoder."""


@torch.no_grad()
def reconstruct(model, images: torch.Tensor, *, removal: str = "attention", keep_ratio: float = 0.5,
                block_size: int = 1, layer: str | int = "mean", generator: torch.Generator | None = None,
                norm_pix: bool = True) -> Reconstruction:
    """Remove tokens, encode the rest, and let the decoder fill the gaps.

    Args:
        model: a :class:`DetailCLIP` with a decoder.
        images: (B, 3, S, S) normalised images.
        removal: ``attention`` (the model's own [CLS] scores) or ``random`` (scores from
            ``generator``).
        keep_ratio: fraction of patches kept.
        block_size: removal block side, in patches.
        layer: which attention layer(s) score patches for ``attention``.
        generator: seeded generator for ``random``.
        norm_pix: the decoder was trained against per-patch normalised targets, so its output
            is mapped back with each true patch's mean and std (the paper's default, and ours).
    """
    if model.decoder is None:
        raise NoDecoderError("this model has no pixel decoder (trained with --no-reconstruct, or an "
                             "open_clip model), so it cannot reconstruct")
    if removal not in PROBE_REMOVALS:
        raise UsageError(f"the removal strategy must be {one_of(PROBE_REMOVALS)}, not {removal!r}")
    visual, v = model.visual, model.cfg.vision
    grid, p = visual.grid_size, visual.patch_size
    b = images.shape[0]
    patches = visual.embed_patches(images)  # (B, L, D)
    if removal == "attention":
        scores = reduce_cls_attention(visual.cls_attention(images), layer).mean(dim=1)  # (B, L)
    else:
        scores = random_scores(b, patches.shape[1], generator=generator, device=images.device)
    removal = remove_tokens(patches, scores, keep_ratio, grid=grid, block_size=block_size)
    latent, _ = visual.forward_tokens(removal.kept)  # (B, 1 + K, D)
    pred, _ = model.decoder(latent, removal.ids_restore)  # (B, L, P*P*3)

    target = patchify(images, p)  # (B, L, P*P*3), normalised-image units
    if norm_pix:
        _, mean, std = normalize_patches(target)
        pred = pred * std + mean  # back from per-patch normalised units
    pixels = to_pixels(unpatchify(pred, p, grid), v.mean, v.std)  # (B, 3, S, S)
    original = to_pixels(images, v.mean, v.std)

    removed = removal.mask.reshape(b, *grid)  # (B, gh, gw)
    # (B, gh, gw) -> (B, 1, S, S): each patch's flag over its P x P pixels.
    pixel_mask = removed[:, None].repeat_interleave(p, dim=2).repeat_interleave(p, dim=3)
    pasted = torch.where(pixel_mask, pixels, original)
    kept = torch.where(pixel_mask, torch.full_like(original, 0.5), original)
    counted = pixel_mask if removal.mask.any() else torch.ones_like(pixel_mask)
    weight = counted.expand_as(original).float()
    mse = ((pixels - original).pow(2) * weight).sum(dim=(1, 2, 3)) / weight.sum(dim=(1, 2, 3)).clamp(min=1)
    psnr = 10 * torch.log10(1.0 / mse.clamp(min=1e-10))
    return Reconstruction(original, kept, pixels, pasted, removed, mse, psnr)
