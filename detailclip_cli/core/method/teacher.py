"""The EMA teacher: a frozen copy, an exponential-moving-average update, and its schedule."""

from __future__ import annotations

import copy
import math

import torch
from torch import nn


def make_teacher(student: nn.Module) -> nn.Module:
    """A deep copy of ``student`` that never takes gradients, in eval mode.

    Owners keep it in eval mode when they switch to training (see ``Objective.train``).
    """
    teacher = copy.deepcopy(student)
    teacher.requires_grad_(False)
    return teacher.eval()


@torch.no_grad()
def ema_update_(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """teacher <- momentum * teacher + (1 - momentum) * student, in place; buffers are copied.

    Written as a multiply and an add (not a lerp) so momentum 0 copies the student exactly and
    momentum 1 leaves the teacher bit-for-bit unchanged. A frozen student parameter (no
    ``requires_grad``, e.g. the patch embedding) is copied: its average is itself, and a copy keeps
    the teacher's equal to it bit for bit, where the multiply-add would drift by rounding.
    """
    t_all, s_all = list(teacher.parameters()), list(student.parameters())
    if len(t_all) != len(s_all):
        raise ValueError("teacher and student have different parameter lists")
    pairs = list(zip(t_all, s_all))
    moving = [(t, s.detach()) for t, s in pairs if s.requires_grad]
    if moving:
        t_params, s_params = (list(x) for x in zip(*moving))
        torch._foreach_mul_(t_params, momentum)
        torch._foreach_add_(t_params, s_params, alpha=1.0 - momentum)
    for t, s in pairs:
        if not s.requires_grad:
            t.copy_(s)
    for tb, sb in zip(teacher.buffers(), student.buffers()):
        tb.copy_(sb)


def cosine_schedule(step: int, total_steps: int, start: float, end: float) -> float:
    """Value at ``step`` of a half-cosine from ``start`` (step 0) to ``end`` (step total_steps)."""
    if total_steps <= 0:
        return end
    t = min(max(step / total_steps, 0.0), 1.0)
    return end + 0.5 * (start - end) * (1.0 + math.cos(math.pi * t))
