"""EMA teacher: momentum 0 copies, 1 leaves it alone, buffers follow, and the cosine schedule."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from detailclip_cli.core.method.teacher import cosine_schedule, ema_update_, make_teacher


def _student(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(5, 7), nn.BatchNorm1d(7), nn.GELU(), nn.Linear(7, 3))
    # give the BatchNorm non-trivial running statistics
    net.train()
    net(torch.randn(16, 5))
    return net


def _pair():
    """A teacher and a student with different weights and buffers."""
    student = _student(0)
    teacher = make_teacher(student)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(torch.randn_like(p))
    student(torch.randn(16, 5))  # moves running_mean / running_var / num_batches_tracked
    return teacher, student


def test_make_teacher_is_a_frozen_eval_copy():
    student = _student(1)
    teacher = make_teacher(student)
    assert not teacher.training
    assert student.training
    assert all(not p.requires_grad for p in teacher.parameters())
    assert all(p.requires_grad for p in student.parameters())
    for (n1, p1), (n2, p2) in zip(student.state_dict().items(), teacher.state_dict().items()):
        assert n1 == n2 and torch.equal(p1, p2)
        assert p1.data_ptr() != p2.data_ptr()  # a copy, not shared storage


def test_momentum_zero_copies_the_student():
    teacher, student = _pair()
    ema_update_(teacher, student, 0.0)
    for (n, t), s in zip(teacher.state_dict().items(), student.state_dict().values()):
        assert torch.equal(t, s), n


def test_momentum_one_leaves_the_teacher_bit_identical():
    teacher, student = _pair()
    before = [p.clone() for p in teacher.parameters()]
    ema_update_(teacher, student, 1.0)
    for b, t in zip(before, teacher.parameters()):
        assert torch.equal(b, t)
        assert b.view(torch.int32).equal(t.view(torch.int32))  # same bits
    # buffers are copied from the student regardless of momentum
    for tb, sb in zip(teacher.buffers(), student.buffers()):
        assert torch.equal(tb, sb)


def test_momentum_half_is_the_average_and_buffers_are_copied():
    teacher, student = _pair()
    t0 = [p.clone() for p in teacher.parameters()]
    ema_update_(teacher, student, 0.5)
    for a, s, t in zip(t0, student.parameters(), teacher.parameters()):
        torch.testing.assert_close(t, (a + s) / 2, rtol=0, atol=1e-6)
    bn_t, bn_s = teacher[1], student[1]
    assert torch.equal(bn_t.running_mean, bn_s.running_mean)
    assert torch.equal(bn_t.running_var, bn_s.running_var)
    assert int(bn_t.num_batches_tracked) == int(bn_s.num_batches_tracked) == 2


def test_ema_update_rejects_mismatched_modules():
    with pytest.raises(ValueError):
        ema_update_(nn.Linear(2, 2), nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2)), 0.5)


def test_ema_update_does_not_build_a_graph():
    teacher, student = _pair()
    ema_update_(teacher, student, 0.9)
    assert all(p.grad_fn is None and not p.requires_grad for p in teacher.parameters())


@pytest.mark.parametrize("start, end", [(0.996, 1.0), (1.0, 0.0), (5e-4, 1e-6)])
def test_cosine_schedule_endpoints_and_midpoint(start, end):
    assert cosine_schedule(0, 100, start, end) == pytest.approx(start, abs=1e-15)
    assert cosine_schedule(100, 100, start, end) == pytest.approx(end, abs=1e-15)
    assert cosine_schedule(50, 100, start, end) == pytest.approx((start + end) / 2, abs=1e-15)
    quarter = end + 0.5 * (start - end) * (1 + math.cos(math.pi / 4))
    assert cosine_schedule(25, 100, start, end) == pytest.approx(quarter, abs=1e-15)
    # clamped outside [0, total]
    assert cosine_schedule(500, 100, start, end) == pytest.approx(end, abs=1e-15)
    assert cosine_schedule(-5, 100, start, end) == pytest.approx(start, abs=1e-15)
    assert cosine_schedule(3, 0, start, end) == end


def test_cosine_schedule_is_monotone():
    values = [cosine_schedule(s, 20, 0.99, 1.0) for s in range(21)]
    assert all(a <= b for a, b in zip(values, values[1:]))


def test_a_frozen_student_parameter_is_copied_bit_for_bit():
    teacher, student = _pair()
    student[0].weight.requires_grad_(False)  # frozen (as the patch embedding is)
    moving_before = teacher[3].weight.clone()
    for m in (0.996, 0.9, 0.37):
        ema_update_(teacher, student, m)
        assert teacher[0].weight.view(torch.int32).equal(student[0].weight.view(torch.int32))
    assert not torch.equal(teacher[3].weight, moving_before)  # the others still average
