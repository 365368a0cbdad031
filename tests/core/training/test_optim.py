"""The optimiser's schedule ends and weight-decay policy (the authors' recipe and version 1's)."""

from __future__ import annotations

import math

import pytest
import torch

from helpers import small_model_cfg
from detailclip_cli.core.config import TrainConfig
from detailclip_cli.core.method.objective import DetailCLIPObjective
from detailclip_cli.core.model.detailclip import DetailCLIP
from detailclip_cli.core.training.optim import build_optimizer, lr_at


def test_lr_warms_up_from_1e_6_and_ends_at_1e_5_by_default():
    cfg = TrainConfig(steps=110, warmup_steps=11, lr=5e-4)
    assert (cfg.warmup_start_lr, cfg.min_lr) == (1e-6, 1e-5)
    # the authors' linspace(1e-6, lr, 11): step k is 1e-6 + k * (lr - 1e-6) / 10
    assert lr_at(0, cfg) == pytest.approx(1e-6, rel=1e-12)
    assert lr_at(5, cfg) == pytest.approx(1e-6 + 0.5 * (5e-4 - 1e-6), rel=1e-12)
    assert lr_at(10, cfg) == pytest.approx(5e-4, rel=1e-12)
    # then cosine over the remaining 99 steps, to 1e-5
    assert lr_at(11, cfg) == pytest.approx(5e-4, rel=1e-12)
    assert lr_at(11 + 33, cfg) == pytest.approx(1e-5 + 0.5 * (5e-4 - 1e-5) * (1 + math.cos(math.pi / 3)), rel=1e-12)
    assert lr_at(110, cfg) == pytest.approx(1e-5, rel=1e-12)


def test_an_unfixed_one_epoch_warmup_counts_as_none():
    cfg = TrainConfig(steps=10, warmup_steps=None, lr=1.0, min_lr=0.0)
    assert lr_at(0, cfg) == 1.0
    assert lr_at(0, cfg.with_epoch_length(4)) == pytest.approx(1e-6)


def _groups(policy: str) -> dict[float, set[str]]:
    torch.manual_seed(0)
    obj = DetailCLIPObjective(DetailCLIP(small_model_cfg()), TrainConfig(weight_decay=0.5, weight_decay_policy=policy))
    names = {id(p): n for n, p in obj.named_parameters()}
    return {g["weight_decay"]: {names[id(p)] for p in g["params"]} for g in build_optimizer(obj, obj.cfg).param_groups}


def test_authors_weight_decay_reaches_every_matrix_and_embedding_but_no_bias_or_norm():
    groups = _groups("all_matrices")
    decayed, exempt = groups[0.5], groups[0.0]
    for name in ("model.visual.pos_embed", "model.visual.cls_token", "model.decoder.mask_token",
                 "model.text.positional_embedding", "model.text.token_embedding.weight",
                 "model.visual.blocks.0.attn.qkv.weight", "model.head.prototypes"):
        assert name in decayed, name
    assert "model.logit_scale" in exempt and "model.visual.blocks.0.attn.qkv.bias" in exempt
    assert "model.visual.norm.weight" in exempt and "model.visual.blocks.0.norm1.bias" in exempt
    assert all(name.endswith(("bias", "weight", "logit_scale")) for name in exempt)
    assert not any("patch_embed" in n for n in decayed | exempt)  # frozen by default: not optimised


def test_skip_embeddings_policy_exempts_position_embeddings_cls_and_mask_tokens():
    authors, ours = _groups("all_matrices"), _groups("skip_embeddings")
    moved = authors[0.5] - ours[0.5]
    assert moved == {"model.visual.pos_embed", "model.visual.cls_token", "model.decoder.mask_token",
                     "model.text.positional_embedding"}
    assert ours[0.0] == authors[0.0] | moved
