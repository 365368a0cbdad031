"""Looking inside a model: attention maps are the scores pretraining uses; reconstructions."""

from __future__ import annotations

import pytest
import torch

from detailclip_cli.core.config import load_preset
from detailclip_cli.core.model.detailclip import DetailCLIP
from detailclip_cli.core.model.removal import num_kept, remove_tokens
from detailclip_cli.core.use import probes
from detailclip_cli.errors import UsageError


def test_attention_maps_are_the_scores_pretraining_uses(model, images):
    maps = probes.attention_maps(model, images, layer="mean", keep_ratio=0.25, block_size=2)
    gh, gw = model.visual.grid_size
    assert maps.scores.shape == (3, gh, gw) and maps.removed.shape == (3, gh, gw)
    assert maps.per_head.shape == (3, model.cfg.vision.heads, gh, gw)
    with torch.no_grad():
        _, scores = model.visual.forward_with_scores(images, "mean")  # what the objective's teacher_pass gives
        expected = remove_tokens(model.visual.embed_patches(images), scores, 0.25, grid=(gh, gw), block_size=2)
    torch.testing.assert_close(maps.scores.reshape(3, -1), scores)
    assert torch.equal(maps.removed.reshape(3, -1), expected.mask)
    assert int((~maps.removed[0]).sum()) == num_kept(gh * gw, 0.25, 2)
    last = probes.attention_maps(model, images, layer="last", keep_ratio=0.5, block_size=1)
    assert not torch.allclose(last.scores, maps.scores)


def test_layer_and_removal_checks(model):
    assert probes.check_layer(model, "1") == 1 and probes.check_layer(model, "mean") == "mean"
    with pytest.raises(UsageError, match="out of range"):
        probes.check_layer(model, "5")
    with pytest.raises(UsageError, match="does not divide"):
        probes.check_removal(model, 0.5, 3)
    with pytest.raises(UsageError, match="keep-ratio"):
        probes.check_removal(model, 0.0, 1)
    assert probes.default_block_size(model, 2) == 2 and probes.default_block_size(model, 3) == 1


def test_reconstruction_panels_and_errors(model, images):
    rec = probes.reconstruct(model, images, removal="attention", keep_ratio=0.5, block_size=2)
    size = model.cfg.vision.image_size
    p = model.cfg.vision.patch_size
    for panel in (rec.original, rec.kept, rec.pred, rec.pasted):
        assert panel.shape == (3, 3, size, size) and panel.min() >= 0 and panel.max() <= 1
    pixel_removed = rec.removed.repeat_interleave(p, 1).repeat_interleave(p, 2)[:, None].expand_as(rec.original)
    assert torch.equal(rec.pasted[~pixel_removed], rec.original[~pixel_removed])
    assert torch.equal(rec.pasted[pixel_removed], rec.pred[pixel_removed])
    assert torch.all(rec.kept[pixel_removed] == 0.5)
    # MSE is over removed pixels only, and PSNR follows from it.
    diff = (rec.pred - rec.original).pow(2)
    expected = torch.stack([diff[i][pixel_removed[i]].mean() for i in range(3)])
    torch.testing.assert_close(rec.mse, expected)
    torch.testing.assert_close(rec.psnr, 10 * torch.log10(1 / rec.mse))


def test_random_reconstruction_is_seeded(model, images):
    def run(seed):
        g = torch.Generator().manual_seed(seed)
        return probes.reconstruct(model, images, removal="random", keep_ratio=0.5, block_size=1, generator=g)

    a, b, c = run(3), run(3), run(4)
    assert torch.equal(a.removed, b.removed) and torch.equal(a.pred, b.pred)
    assert not torch.equal(a.removed, c.removed)


def test_reconstruct_needs_a_decoder(model):
    cfg, _ = load_preset("tiny")
    cfg.vision.depth, cfg.decoder, cfg.head = 1, None, None
    bare = DetailCLIP(cfg).eval()
    with pytest.raises(probes.NoDecoderError):
        probes.reconstruct(bare, torch.zeros(1, 3, 64, 64))
