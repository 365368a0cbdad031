"""Token removal: keep the highest-scored patch tokens, and put the sequence back together.

Pure functions over *patch* tokens only (the [CLS] token is never passed in), so no caller has
to shift indices around it. Attention-guided removal feeds teacher scores; random removal is the
same function fed random scores from a seeded generator; ``block_size > 1`` decides per
``block_size x block_size`` block of patches so whole regions stay or go.

Shape letters: B batch, L patch tokens, K kept tokens, D width.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch


class Removal(NamedTuple):
    """The result of :func:`remove_tokens`.

    Attributes:
        kept: (B, K, D) the kept tokens, highest score first.
        ids_keep: (B, K) their positions in the full patch sequence.
        ids_restore: (B, L) for each original position, its index in ``[kept, removed]`` order;
            ``restore_tokens`` uses it to undo the shuffle.
        mask: (B, L) bool, True where the token was removed.
    """

    kept: torch.Tensor
    ids_keep: torch.Tensor
    ids_restore: torch.Tensor
    mask: torch.Tensor


def num_kept(num_patches: int, keep_ratio: float, block_size: int = 1) -> int:
    """How many patch tokens survive removal at ``keep_ratio``: ``floor(cells * r) + 1`` whole
    blocks, at most all of them, as the authors count (25 of 49 cells at 0.5, so 100 of 196
    patches with 2x2 blocks; 13 cells at 0.25, 37 at 0.75)."""
    if not 0.0 < keep_ratio <= 1.0:
        raise ValueError(f"keep_ratio must be in (0, 1], got {keep_ratio}")
    cells = num_patches // (block_size * block_size)
    kept_cells = min(cells, math.floor(cells * keep_ratio) + 1)
    return kept_cells * block_size * block_size


def block_order(scores: torch.Tensor, grid: tuple[int, int], block_size: int) -> torch.Tensor:
    """Patch positions sorted by score (highest first), with the patches of a block kept together.

    Args:
        scores: (B, L) per-patch scores.
        grid: (gh, gw).
        block_size: block side in patches.

    Returns:
        (B, L) long, a permutation of ``range(L)`` per row.
    """
    gh, gw = grid
    b, n = scores.shape
    if n != gh * gw:
        raise ValueError(f"scores have {n} patches but the grid is {gh}x{gw}")
    if block_size == 1:
        return torch.argsort(scores, dim=1, descending=True, stable=True)
    if gh % block_size or gw % block_size:
        raise ValueError(f"block_size {block_size} does not divide the {gh}x{gw} patch grid")
    bh, bw = gh // block_size, gw // block_size
    cell = torch.nn.functional.avg_pool2d(scores.reshape(b, 1, gh, gw), block_size)  # (B, 1, bh, bw)
    cell_order = torch.argsort(cell.reshape(b, bh * bw), dim=1, descending=True, stable=True)
    # Patch positions of every block, (bh*bw, bs*bs): block (r, c) covers rows r*bs.., cols c*bs..
    pos = torch.arange(gh * gw, device=scores.device).reshape(bh, block_size, bw, block_size)
    pos = pos.permute(0, 2, 1, 3).reshape(bh * bw, block_size * block_size)
    return pos[cell_order].reshape(b, n)  # (B, bh*bw, bs*bs) -> (B, L)


def remove_tokens(
    x: torch.Tensor,
    scores: torch.Tensor,
    keep_ratio: float,
    *,
    grid: tuple[int, int],
    block_size: int = 1,
) -> Removal:
    """Keep the ``keep_ratio`` fraction of patch tokens with the highest scores.

    Every sample keeps the same number of tokens, so the kept tokens stack into one tensor.

    Args:
        x: (B, L, D) patch tokens (no [CLS]).
        scores: (B, L) one score per patch; higher means keep.
        keep_ratio: fraction of patches kept, in (0, 1].
        grid: (gh, gw) patch grid with gh * gw == L.
        block_size: decide per block of ``block_size x block_size`` patches (1 = per patch).

    Returns:
        A :class:`Removal` with kept (B, K, D), ids_keep (B, K), ids_restore (B, L), mask (B, L).
    """
    b, n, d = x.shape
    k = num_kept(n, keep_ratio, block_size)
    ids_shuffle = block_order(scores, grid, block_size)  # (B, L), best first
    ids_restore = torch.argsort(ids_shuffle, dim=1)  # (B, L)
    ids_keep = ids_shuffle[:, :k]  # (B, K)
    kept = torch.gather(x, 1, ids_keep.unsqueeze(-1).expand(b, k, d))  # (B, L, D) -> (B, K, D)
    mask = torch.ones(b, n, dtype=torch.bool, device=x.device)
    mask.scatter_(1, ids_keep, False)
    return Removal(kept, ids_keep, ids_restore, mask)


def restore_tokens(kept: torch.Tensor, ids_restore: torch.Tensor, mask_token: torch.Tensor) -> torch.Tensor:
    """Undo :func:`remove_tokens`: the full sequence with ``mask_token`` at removed positions.

    Args:
        kept: (B, K, D) kept tokens in the order :func:`remove_tokens` returned them.
        ids_restore: (B, L) from the same removal.
        mask_token: (D,) or (1, 1, D) the token placed where patches were removed.

    Returns:
        (B, L, D) tokens in original grid order.
    """
    b, k, d = kept.shape
    n = ids_restore.shape[1]
    fill = mask_token.reshape(1, 1, d).to(kept.dtype).expand(b, n - k, d)  # (B, L-K, D)
    full = torch.cat([kept, fill], dim=1)  # (B, L, D) in shuffled order
    return torch.gather(full, 1, ids_restore.unsqueeze(-1).expand(b, n, d))  # unshuffle


def random_scores(batch: int, num_patches: int, *, generator: torch.Generator | None = None,
                  device: torch.device | str = "cpu") -> torch.Tensor:
    """(B, L) uniform scores from ``generator``: feeding them to :func:`remove_tokens` is random removal."""
    scores = torch.rand(batch, num_patches, generator=generator)
    return scores.to(device)
