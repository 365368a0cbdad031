"""Token removal contracts: keep exactly K tokens, the best-scored ones, and restore inverts remove."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from detailclip_cli.core.model.removal import num_kept, random_scores, remove_tokens, restore_tokens

GRIDS = [(8, 8), (14, 14), (7, 9)]


def _tokens(b: int, grid: tuple[int, int], d: int, seed: int = 0):
    """(B, L, D) tokens whose values encode their position, and (B, L) distinct scores."""
    g = torch.Generator().manual_seed(seed)
    n = grid[0] * grid[1]
    x = torch.randn(b, n, d, generator=g)
    scores = torch.randperm(b * n, generator=g).reshape(b, n).float()  # no ties
    return x, scores


def _block_means(scores: torch.Tensor, grid: tuple[int, int], bs: int) -> torch.Tensor:
    """(B, L) -> (B, L): each patch's value replaced by the mean of its bs x bs block."""
    b = scores.shape[0]
    gh, gw = grid
    blocks = scores.reshape(b, gh // bs, bs, gw // bs, bs)
    means = blocks.mean(dim=(2, 4), keepdim=True).expand_as(blocks)
    return means.reshape(b, gh * gw)


def _block_ids(grid: tuple[int, int], bs: int) -> torch.Tensor:
    """(L,) the block index of every patch, row-major."""
    gh, gw = grid
    rows = torch.arange(gh).repeat_interleave(gw) // bs
    cols = torch.arange(gw).repeat(gh) // bs
    return rows * (gw // bs) + cols


def _check_consistent(r, x: torch.Tensor, k: int) -> None:
    """ids_keep / ids_restore / mask / kept all describe the same removal."""
    b, n, d = x.shape
    assert r.kept.shape == (b, k, d)
    assert r.ids_keep.shape == (b, k)
    assert r.ids_restore.shape == (b, n)
    assert r.mask.shape == (b, n) and r.mask.dtype == torch.bool
    for i in range(b):
        keep = r.ids_keep[i]
        assert len(set(keep.tolist())) == k
        # kept tokens are the rows of x at ids_keep
        assert torch.equal(r.kept[i], x[i, keep])
        # mask is False exactly at ids_keep
        expected_mask = torch.ones(n, dtype=torch.bool)
        expected_mask[keep] = False
        assert torch.equal(r.mask[i], expected_mask)
        assert int(r.mask[i].sum()) == n - k
        # ids_restore is a permutation; kept positions point into the first K slots
        assert sorted(r.ids_restore[i].tolist()) == list(range(n))
        assert torch.equal(keep[r.ids_restore[i, keep]], keep)
        assert bool((r.ids_restore[i, keep] < k).all())
        assert bool((r.ids_restore[i, r.mask[i]] >= k).all())


def test_num_kept_reference_values():
    # the authors' count, floor(cells * r) + 1 cells, capped at all cells
    assert num_kept(64, 0.5) == 33  # floor(32) + 1
    assert num_kept(64, 0.5, 2) == 36  # 16 cells -> 9 cells of 4
    assert num_kept(196, 0.25) == 50
    assert num_kept(63, 0.3) == 19  # floor(18.9) + 1
    assert num_kept(64, 0.01, 2) == 4  # floor(0.16) + 1: one block
    assert num_kept(64, 1.0, 2) == 64  # 17 cells capped at 16
    assert num_kept(1, 1.0) == 1


@pytest.mark.parametrize("keep_ratio, kept", [(0.5, 100), (0.25, 52), (0.75, 148)])
def test_kept_patches_on_a_14x14_grid_with_2x2_blocks_match_the_authors(keep_ratio, kept):
    # 49 cells: 24.5 -> 25 cells (100 patches), 12.25 -> 13 (52), 36.75 -> 37 (148)
    assert num_kept(196, keep_ratio, 2) == kept
    x = torch.randn(2, 196, 3, generator=torch.Generator().manual_seed(0))
    scores = torch.rand(2, 196, generator=torch.Generator().manual_seed(1))
    r = remove_tokens(x, scores, keep_ratio, grid=(14, 14), block_size=2)
    assert r.kept.shape == (2, kept, 3) and (~r.mask).sum(dim=1).tolist() == [kept, kept]


@pytest.mark.parametrize("grid", GRIDS, ids=lambda g: f"{g[0]}x{g[1]}")
@pytest.mark.parametrize("keep_ratio", [0.25, 0.5, 0.9])
def test_keeps_exactly_the_top_scored_tokens(grid, keep_ratio):
    x, scores = _tokens(3, grid, 5)
    n = grid[0] * grid[1]
    k = num_kept(n, keep_ratio)
    r = remove_tokens(x, scores, keep_ratio, grid=grid)
    _check_consistent(r, x, k)
    reference = torch.sort(scores, dim=1, descending=True).indices[:, :k]
    assert torch.equal(r.ids_keep, reference)  # highest first, same order as a sort
    kept_scores = torch.gather(scores, 1, r.ids_keep)
    assert bool((kept_scores[:, :-1] > kept_scores[:, 1:]).all())


@pytest.mark.parametrize("grid", GRIDS, ids=lambda g: f"{g[0]}x{g[1]}")
def test_restore_puts_tokens_back_and_mask_token_elsewhere(grid):
    x, scores = _tokens(2, grid, 6, seed=1)
    mask_token = torch.full((6,), -7.0)
    r = remove_tokens(x, scores, 0.4, grid=grid)
    full = restore_tokens(r.kept, r.ids_restore, mask_token)
    assert full.shape == x.shape
    keep = ~r.mask
    assert torch.equal(full[keep], x[keep])
    assert bool((full[r.mask] == -7.0).all())
    # (1, 1, D) mask token is accepted too and gives the same result
    assert torch.equal(restore_tokens(r.kept, r.ids_restore, mask_token.reshape(1, 1, 6)), full)


@pytest.mark.parametrize("grid", GRIDS, ids=lambda g: f"{g[0]}x{g[1]}")
def test_keep_ratio_one_is_the_identity(grid):
    x, scores = _tokens(2, grid, 4, seed=2)
    r = remove_tokens(x, scores, 1.0, grid=grid)
    assert not bool(r.mask.any())
    assert torch.equal(restore_tokens(r.kept, r.ids_restore, torch.zeros(4)), x)


@pytest.mark.parametrize("grid", [(8, 8), (14, 14)], ids=lambda g: f"{g[0]}x{g[1]}")
def test_block_mode_removes_whole_blocks_with_lowest_mean(grid):
    bs = 2
    x, _ = _tokens(3, grid, 4, seed=3)
    g = torch.Generator().manual_seed(3)
    scores = torch.rand(3, grid[0] * grid[1], generator=g)
    n = grid[0] * grid[1]
    num_blocks = n // 4
    k = num_kept(n, 0.5, bs)
    r = remove_tokens(x, scores, 0.5, grid=grid, block_size=bs)
    _check_consistent(r, x, k)
    block_of = _block_ids(grid, bs)
    means = _block_means(scores, grid, bs)
    for i in range(3):
        # every block is fully kept or fully removed
        per_block = torch.zeros(num_blocks).index_add_(0, block_of, r.mask[i].float())
        assert set(per_block.tolist()) <= {0.0, 4.0}
        # the kept blocks are the k / 4 blocks with the highest mean score
        block_means = torch.zeros(num_blocks).index_add_(0, block_of, scores[i]) / 4
        top = set(torch.sort(block_means, descending=True).indices[: k // 4].tolist())
        assert set(block_of[r.ids_keep[i]].tolist()) == top
        # kept tokens come block by block, best block first
        kept_means = means[i, r.ids_keep[i]]
        assert bool((kept_means[:-1] >= kept_means[1:]).all())


def test_block_mode_hand_checked_4x4():
    # 4x4 grid, 2x2 blocks; block means: top-left 1, top-right 10, bottom-left 5, bottom-right 2
    scores = torch.tensor([
        [1.0, 1.0, 0.0, 20.0],
        [1.0, 1.0, 10.0, 10.0],
        [5.0, 5.0, 2.0, 2.0],
        [5.0, 5.0, 2.0, 2.0],
    ]).reshape(1, 16)
    x = torch.arange(16.0).reshape(1, 16, 1)
    r = remove_tokens(x, scores, 0.25, grid=(4, 4), block_size=2)  # floor(4 * 0.25) + 1 = 2 of 4 blocks
    assert r.ids_keep.tolist() == [[2, 3, 6, 7, 8, 9, 12, 13]]
    expected_mask = torch.tensor([[True, True, False, False, True, True, False, False,
                                   False, False, True, True, False, False, True, True]])
    assert torch.equal(r.mask, expected_mask)


def test_block_size_must_divide_the_grid():
    x, scores = _tokens(1, (7, 9), 3)
    remove_tokens(x, scores, 0.5, grid=(7, 9), block_size=1)  # fine
    with pytest.raises(ValueError, match="block_size 2"):
        remove_tokens(x, scores, 0.5, grid=(7, 9), block_size=2)


def test_scores_must_match_the_grid():
    x, scores = _tokens(1, (8, 8), 3)
    with pytest.raises(ValueError, match="8x9"):
        remove_tokens(x, scores, 0.5, grid=(8, 9))


@pytest.mark.parametrize("keep_ratio", [0.0, -0.5, 1.0001, 1.5])
def test_keep_ratio_outside_unit_interval_raises(keep_ratio):
    x, scores = _tokens(1, (8, 8), 3)
    with pytest.raises(ValueError, match="keep_ratio"):
        remove_tokens(x, scores, keep_ratio, grid=(8, 8))


def test_random_removal_is_reproducible_with_a_seeded_generator():
    x, _ = _tokens(4, (8, 8), 3)

    def run(seed: int):
        s = random_scores(4, 64, generator=torch.Generator().manual_seed(seed))
        return s, remove_tokens(x, s, 0.5, grid=(8, 8), block_size=2)

    s1, r1 = run(123)
    s2, r2 = run(123)
    s3, r3 = run(124)
    assert s1.shape == (4, 64)
    assert bool(((s1 >= 0) & (s1 < 1)).all())
    assert torch.equal(s1, s2)
    for a, b in zip(r1, r2):
        assert torch.equal(a, b)
    assert not torch.equal(r1.mask, r3.mask)
    # each sample gets its own pattern
    assert not torch.equal(r1.mask[0], r1.mask[1])


@st.composite
def _removal_case(draw):
    bs = draw(st.integers(1, 3))
    gh = bs * draw(st.integers(1, 5))
    gw = bs * draw(st.integers(1, 5))
    keep_ratio = draw(st.floats(0.01, 1.0))
    b = draw(st.integers(1, 3))
    d = draw(st.integers(1, 4))
    seed = draw(st.integers(0, 2**31 - 1))
    return bs, (gh, gw), keep_ratio, b, d, seed


@settings(max_examples=60, deadline=None, database=None)
@given(_removal_case())
def test_removal_property(case):
    bs, grid, keep_ratio, b, d, seed = case
    n = grid[0] * grid[1]
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, n, d, generator=g)
    scores = torch.rand(b, n, generator=g)
    k = num_kept(n, keep_ratio, bs)
    assert k % (bs * bs) == 0 and bs * bs <= k <= n
    r = remove_tokens(x, scores, keep_ratio, grid=grid, block_size=bs)
    _check_consistent(r, x, k)
    # whole blocks only, and no removed block beats a kept one
    block_of = _block_ids(grid, bs)
    means = _block_means(scores, grid, bs)
    for i in range(b):
        per_block = torch.zeros(n // (bs * bs)).index_add_(0, block_of, r.mask[i].float())
        assert set(per_block.tolist()) <= {0.0, float(bs * bs)}
        if k < n:
            assert means[i, ~r.mask[i]].min() >= means[i, r.mask[i]].max()
    # restore inverts removal at the kept positions
    full = restore_tokens(r.kept, r.ids_restore, torch.full((d,), float("nan")))
    assert torch.equal(full[~r.mask], x[~r.mask])
    assert bool(full[r.mask].isnan().all())
