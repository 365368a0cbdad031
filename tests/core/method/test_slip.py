"""SLIP's SimCLR term in the DetailCLIP objective (``simclr_term``, ``--recipe slip``): what it
computes, that its projection learns, and that its negatives are the step's global batch."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from helpers import small_model_cfg
from detailclip_cli.core.config import load_preset
from detailclip_cli.core.method.losses import nt_xent_loss
from detailclip_cli.core.method.objective import DetailCLIPObjective, SSLProjection
from detailclip_cli.core.model.detailclip import DetailCLIP
from detailclip_cli.core.recipes import load_recipe

B = 4


def _slip_objective(**changes) -> DetailCLIPObjective:
    _, train = load_preset("tiny")
    settings = {"batch_size": B, "removal": "none", "simclr_term": True, "ssl_mlp_dim": 32, "ssl_emb_dim": 16}
    cfg = dataclasses.replace(train, **{**settings, **changes})
    torch.manual_seed(0)
    return DetailCLIPObjective(DetailCLIP(small_model_cfg(decoder=None, head=None)), cfg)


def _batch():
    g = torch.Generator().manual_seed(0)
    views = torch.randn(B, 3, 64, 64, generator=g), torch.randn(B, 3, 64, 64, generator=g)
    return (*views, torch.randint(0, 500, (B, 8), generator=g))


def test_the_simclr_term_is_nt_xent_of_the_projected_cls_tokens_and_weighs_one():
    objective = _slip_objective()
    view1, view2, text = _batch()
    losses = objective(view1, view2, text, step=0)
    assert set(losses) == {"clip", "simclr", "loss"}

    # By hand: the encoder's [CLS] of each whole view (removal none), SLIP's MLP, NT-Xent at 0.1.
    model = objective.model
    z1, z2 = (objective.simclr_proj(model.visual(v)[:, 0]) for v in (view1, view2))  # (B, 16) each
    assert z1.shape == (B, 16)
    torch.testing.assert_close(losses["simclr"], nt_xent_loss(z1, z2, 0.1))
    torch.testing.assert_close(losses["loss"], losses["clip"] + losses["simclr"])

    # A different temperature gives a different value: the term reads ssl_temp.
    warm = _slip_objective(ssl_temp=0.5)
    torch.testing.assert_close(warm(view1, view2, text, step=0)["simclr"], nt_xent_loss(z1, z2, 0.5))


def test_the_projection_gets_a_gradient_and_stays_out_of_the_saved_model():
    objective = _slip_objective()
    objective(*_batch(), step=0)["loss"].backward()
    for name, p in objective.simclr_proj.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    # Through the projection, the SimCLR loss reaches the image tower too.
    assert objective.model.visual.blocks[0].attn.qkv.weight.grad.abs().sum() > 0
    # Trained and checkpointed with the objective (like distill's bridges), not in model.safetensors.
    keys = objective.state_dict().keys()
    assert any(k.startswith("simclr_proj.") for k in keys)
    assert not any("simclr" in k for k in objective.model.state_dict())


def test_the_projection_is_slip_shaped_with_a_per_sample_norm():
    proj = SSLProjection(48, 32, 16)
    linears = [m for m in proj.mlp if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(48, 32), (32, 32), (32, 16)]
    x = torch.randn(5, 48)
    # Per sample: a row's projection does not depend on the other rows of its batch.
    torch.testing.assert_close(proj(x)[:2], proj(x[:2]))


def test_without_the_switch_there_is_no_projection_and_no_term():
    objective = _slip_objective(simclr_term=False)
    assert objective.simclr_proj is None
    assert "simclr" not in objective(*_batch(), step=0)


@pytest.mark.slow
def test_accumulation_gives_the_one_batch_simclr_loss(demo_cache, tmp_path):
    """Two micro-batches of 4: the NT-Xent negatives are all 8 rows (cached features), so the
    losses and the projection's weights equal one batch of 8."""
    from safetensors.torch import load_file

    from detailclip_cli.core.config import configs_from_dict
    from detailclip_cli.core.training.pretrain import train

    document = {"preset": "tiny", "model": {"vision": {"depth": 2}, "text": {"layers": 1}},
                "train": {"batch_size": 8, "steps": 2, "lr": 3e-4, "warmup_steps": 1, "log_every": 1,
                          "save_every": 2, "ssl_mlp_dim": 64, "ssl_emb_dim": 32}}
    runs = {}
    for accum in (1, 2):
        model_cfg, train_cfg = configs_from_dict(document, recipe=load_recipe("slip").overlay())
        train_cfg.accum_steps = accum
        runs[accum] = tmp_path / f"accum{accum}"
        list(train(model_cfg, train_cfg, data="demo", out_dir=runs[accum], device="cpu"))
    rows = {a: [json.loads(x) for x in (r / "metrics.jsonl").read_text().splitlines()] for a, r in runs.items()}
    for one, two in zip(rows[1], rows[2]):
        for k in ("clip", "simclr", "loss"):
            assert two[k] == pytest.approx(one[k], rel=1e-4), (one["step"], k)
    states = {a: load_file(r / "train_state.safetensors") for a, r in runs.items()}
    names = [k for k in states[1] if k.startswith("objective.simclr_proj.")]
    assert names
    for k in names:
        torch.testing.assert_close(states[2][k], states[1][k], rtol=0, atol=1e-5)
