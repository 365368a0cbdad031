"""From rounds of wall times to the record's figures: medians and ratios taken round by round.

The spread of a figure (min, quartiles, max) and the rounding are :func:`~detailclip_cli.tools.
costs.spread` and :func:`~detailclip_cli.tools.costs.round_sig`, shared with the dry-run report.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence

from detailclip_cli.tools.costs import round_sig


def median(samples: Sequence[float]) -> float:
    """The figure a section reports for repeated runs (targets are judged on it)."""
    return statistics.median(samples)


def per_round(fn: Callable[..., float], *samples: Sequence[float]) -> list[float]:
    """``fn`` of the i-th sample of each list, for every round i (a ratio taken round by round)."""
    return [fn(*values) for values in zip(*samples)]


def rounded_ratio(a: float | None, b: float | None) -> float | None:
    """``a / b`` rounded for the record; None when either is missing or ``b`` is 0."""
    return round_sig(a / b) if a is not None and b else None
