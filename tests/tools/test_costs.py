"""What a training step costs: FLOP counts against hand counts, the step, the dry-run report."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from detailclip_cli.tools.costs import TrainStep, count_flops, dry_run, round_sig, variant_configs


def test_linear_forward_and_backward_flops_are_hand_counted():
    lin = torch.nn.Linear(8, 4)
    x = torch.randn(3, 8, requires_grad=True)
    # forward x @ W^T: 2 * 3 * 8 * 4 = 192; backward: grad x (3x4 @ 4x8) and grad W (4x3 @ 3x8), 192 each
    assert count_flops(lambda: lin(x)) == 192
    assert count_flops(lambda: lin(x).sum().backward()) == 3 * 192
    x.requires_grad_(False)
    assert count_flops(lambda: lin(x).sum().backward()) == 2 * 192  # no gradient for the input


def test_cpu_attention_flops_are_counted():
    q = torch.randn(2, 3, 10, 8)
    # QK^T and AV: two batched matmuls of 2 * (B*H) * N * N * d FLOPs each.
    assert count_flops(lambda: F.scaled_dot_product_attention(q, q, q)) == 2 * 2 * (2 * 3) * 10 * 10 * 8


def test_clip_step_flops_grow_with_the_batch():
    """The towers cost the same per image: twice the batch is twice the FLOPs, up to the B x B logits."""
    flops = {}
    for b in (2, 4):
        step = TrainStep(*variant_configs("tiny", "clip"), batch_size=b, device=torch.device("cpu"))
        flops[b] = count_flops(step.forward_backward)
    assert flops[4] / flops[2] == pytest.approx(2.0, rel=1e-3)
    assert flops[4] != 2 * flops[2]  # the contrastive logits are quadratic in B


def test_the_step_trains_and_its_teacher_follows():
    step = TrainStep(*variant_configs("tiny", "detailclip"), batch_size=2, device=torch.device("cpu"))
    teacher = [p.clone() for p in step.objective.teacher.parameters()]
    first = step()
    assert step.step == 1 and first > 0
    assert any(not torch.equal(a, b) for a, b in zip(teacher, step.objective.teacher.parameters()))


@pytest.mark.slow
def test_dry_run_reports_the_model_and_a_positive_cost():
    model_cfg, train_cfg = variant_configs("tiny", "detailclip")
    train_cfg.batch_size = 2
    report = dry_run(model_cfg, train_cfg)
    step = TrainStep(model_cfg, train_cfg, batch_size=2, device=torch.device("cpu"))
    assert report["parameters"] == step.model.num_params()
    assert report["batch_size"] == 2
    assert report["gflop_per_step"] == round_sig(count_flops(step.forward_backward) / 1e9, 2)
    assert report["gflop_per_step"] > 0 and report["model_mib"] > 0


def test_round_sig_keeps_significant_digits():
    assert round_sig(123456.0) == 123500.0
    assert round_sig(0.000123456) == 0.0001235
    assert round_sig(0.0) == 0.0 and round_sig(None) is None
