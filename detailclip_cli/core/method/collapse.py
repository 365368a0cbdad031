"""Seeing collapse coming: two batch statistics and a warning given once.

Without negatives, a self-distillation objective can map every image to one point, and the
loss may look fine while it happens. Two statistics show it early (DINO, section 5.3):

- :func:`embedding_spread`: the mean over dimensions of the standard deviation, across the
  batch, of L2-normalised embeddings. Identical rows give 0. Directions drawn uniformly on the
  sphere in D dimensions give about ``1 / sqrt(D)`` (each coordinate then has variance 1 / D):
  :func:`random_spread`. Trained embeddings share a mean direction and sit below that; the tiny
  preset's [CLS] tokens measure about 0.7 of it both at initialisation and after training.
- :func:`teacher_entropy`: the mean Shannon entropy (nats) of the teacher's centred and
  sharpened distribution over C prototypes. A teacher that puts all its mass on one prototype
  gives 0 (sharpening has won: every image gets the same one-hot target); a uniform teacher
  gives ``log C`` (centring has won: the targets carry no information). A healthy teacher sits
  in between (the tiny preset: about 0.6 log C at initialisation, 0.3 log C after 100 steps).

Both thresholds are relative to those reference values, so they hold at any width and C:

- spread below ``SPREAD_FRACTION`` (0.2) of ``1 / sqrt(D)``,
- teacher entropy below ``ENTROPY_LOW_FRACTION`` (0.05) of ``log C`` (one-hot collapse) or
  above ``ENTROPY_HIGH_FRACTION`` (0.98) of it (uniform collapse).

:class:`CollapseMonitor` checks them at each logged step and issues one :class:`CollapseWarning`
(Python's ``warnings``; the CLI prints it as one line on stderr) the first time one is crossed.

Shape letters: B batch, D embedding width, C prototypes.
"""

from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F

from detailclip_cli.core.method.losses import entropy

SPREAD_FRACTION = 0.2
ENTROPY_LOW_FRACTION = 0.05
ENTROPY_HIGH_FRACTION = 0.98


class CollapseWarning(UserWarning):
    """The student's embeddings or the teacher's distribution are falling towards collapse."""


def embedding_spread(x: torch.Tensor) -> torch.Tensor:
    """Mean per-dimension standard deviation of L2-normalised embeddings across a batch.

    Args:
        x: (..., B, D) embeddings; leading dimensions (e.g. views) are averaged over, each
            batch of B rows measured on its own.

    Returns:
        Scalar: 0 for identical rows, about ``1 / sqrt(D)`` for random directions.
    """
    z = F.normalize(x.detach().float(), dim=-1)  # (..., B, D) on the unit sphere
    return z.std(dim=-2, correction=0).mean()  # std over the batch, mean over dims and views


def random_spread(dim: int) -> float:
    """The spread of random directions in ``dim`` dimensions: the reference ``1 / sqrt(dim)``."""
    return 1.0 / math.sqrt(dim)


def teacher_entropy(teacher_out: torch.Tensor, *, center: torch.Tensor | float = 0.0,
                    teacher_temp: float = 1.0) -> torch.Tensor:
    """Mean entropy (nats) of the teacher's centred, sharpened distribution.

    Args:
        teacher_out: (..., C) teacher logits.
        center: (1, C) running centre (the loss modules' ``center`` buffer), or 0.
        teacher_temp: the sharpening temperature.

    Returns:
        Scalar in [0, log C]: 0 for one-hot distributions, ``log C`` for uniform ones.
    """
    probs = F.softmax((teacher_out.detach().float() - center) / teacher_temp, dim=-1)
    return entropy(probs)


# What to try when the spread collapses, for an objective with an EMA teacher (the default) and
# for one whose negatives hold the embeddings apart (SimCLR).
TEACHER_REMEDIES = "try a higher teacher momentum (momentum_base), a larger batch"
NEGATIVES_REMEDIES = "try a larger batch (more negatives), a higher temperature (ssl_temp) or a lower lr"


def collapse_message(*, spread: float, dim: int, entropy_value: float | None = None,
                     classes: int | None = None, remedies: str | None = None) -> str | None:
    """Why the statistics look like collapse, with what to try; None when they look healthy.

    Args:
        spread: :func:`embedding_spread` of the student's embeddings.
        dim: their width D.
        entropy_value: :func:`teacher_entropy`, when the teacher has a distribution.
        classes: its number of prototypes C.
        remedies: what to try when the spread collapses; None for an EMA teacher's
            (:data:`TEACHER_REMEDIES`, and a lower teacher temperature).
    """
    reference = random_spread(dim)
    if spread < SPREAD_FRACTION * reference:
        advice = remedies or f"{TEACHER_REMEDIES}, or a lower teacher temperature (teacher_temp_cls)"
        return (f"student embeddings are collapsing to one point: spread {spread:.4f}, under "
                f"{SPREAD_FRACTION} x a random batch's {reference:.4f}; {advice}")
    if entropy_value is None or classes is None or classes < 2:
        return None
    uniform = math.log(classes)
    if entropy_value < ENTROPY_LOW_FRACTION * uniform:
        return (f"the teacher's distribution is collapsing to one prototype: entropy "
                f"{entropy_value:.3f}, under {ENTROPY_LOW_FRACTION} x log C = {uniform:.3f}; {TEACHER_REMEDIES}, "
                f"or a higher teacher temperature or faster centring (teacher_temp_cls, center_momentum)")
    if entropy_value > ENTROPY_HIGH_FRACTION * uniform:
        return (f"the teacher's distribution is collapsing to uniform: entropy {entropy_value:.3f}, "
                f"over {ENTROPY_HIGH_FRACTION} x log C = {uniform:.3f}; {TEACHER_REMEDIES}, or a lower teacher "
                f"temperature (teacher_temp_cls)")
    return None


class CollapseMonitor:
    """Checks the collapse statistics and warns once per run.

    Args:
        dim: width D of the embeddings whose spread is measured.
        classes: number of teacher prototypes C, or None when no teacher gives a distribution
            (a frozen teacher, BYOL's target, SimCLR: only the student's spread is checked).
        remedies: what the message suggests for a collapsing spread (see :func:`collapse_message`).
    """

    def __init__(self, *, dim: int, classes: int | None = None, remedies: str | None = None):
        self.dim = dim
        self.classes = classes
        self.remedies = remedies
        self.warned = False

    def check(self, *, step: int, spread: float, entropy_value: float | None = None) -> str | None:
        """Issue a :class:`CollapseWarning` the first time the statistics cross a threshold.

        Returns:
            The warning's message when one was issued now, else None.
        """
        if self.warned:
            return None
        message = collapse_message(spread=spread, dim=self.dim, entropy_value=entropy_value,
                                   classes=self.classes, remedies=self.remedies)
        if message is None:
            return None
        self.warned = True
        message = f"collapse ahead at step {step}: {message}"
        warnings.warn(message, CollapseWarning, stacklevel=2)
        return message
