"""Collapse statistics on constructed batches, and the warning given once."""

from __future__ import annotations

import io
import math
import warnings

import pytest
import torch

from detailclip_cli.core.method.collapse import (NEGATIVES_REMEDIES, CollapseMonitor, CollapseWarning, collapse_message,
                                                 embedding_spread, random_spread, teacher_entropy)


def test_identical_rows_have_zero_spread():
    row = torch.randn(1, 32)
    assert embedding_spread(row.expand(16, 32)).item() == 0.0
    # Rows that differ only in length are the same direction: still collapsed.
    scaled = row * torch.linspace(0.5, 3.0, 16).unsqueeze(1)
    assert embedding_spread(scaled).item() == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("dim", [16, 64, 256])
def test_random_directions_spread_is_one_over_sqrt_d(dim):
    x = torch.randn(4096, dim, generator=torch.Generator().manual_seed(dim))
    assert random_spread(dim) == pytest.approx(1 / math.sqrt(dim))
    assert embedding_spread(x).item() == pytest.approx(1 / math.sqrt(dim), rel=0.03)


def test_spread_averages_leading_dimensions_per_batch():
    # Two views: one collapsed, one random. Each batch is measured on its own.
    x = torch.stack([torch.ones(2048, 64), torch.randn(2048, 64)])  # (V, B, D)
    assert embedding_spread(x).item() == pytest.approx(0.5 / 8, rel=0.05)


def test_one_hot_teacher_has_zero_entropy_and_uniform_has_log_c():
    c = 100
    peaked = torch.full((8, c), -30.0)
    peaked[torch.arange(8), torch.randint(0, c, (8,))] = 30.0
    assert teacher_entropy(peaked).item() == pytest.approx(0.0, abs=1e-6)
    assert teacher_entropy(torch.zeros(8, c)).item() == pytest.approx(math.log(c), rel=1e-6)


def test_teacher_entropy_uses_centre_and_temperature():
    c = 10
    logits = torch.randn(4, c).abs() * 0.01 + torch.arange(c, dtype=torch.float)  # peaked on the last class
    # Subtracting the row itself as the centre leaves (almost) equal logits: uniform.
    assert teacher_entropy(logits[:1], center=logits[:1]).item() == pytest.approx(math.log(c), rel=1e-6)
    # A lower temperature sharpens: the entropy falls.
    assert teacher_entropy(logits, teacher_temp=0.1) < teacher_entropy(logits, teacher_temp=10.0)


def test_healthy_statistics_give_no_message():
    assert collapse_message(spread=0.7 * random_spread(64), dim=64, entropy_value=0.4 * math.log(256),
                            classes=256) is None
    # Without a teacher distribution only the spread counts.
    assert collapse_message(spread=0.7 * random_spread(64), dim=64) is None


@pytest.mark.parametrize("kwargs, words", [
    ({"spread": 0.0}, "collapsing to one point"),
    ({"spread": 0.1, "entropy_value": 0.0}, "collapsing to one prototype"),
    ({"spread": 0.1, "entropy_value": math.log(256)}, "collapsing to uniform"),
])
def test_each_kind_of_collapse_is_named_with_remedies(kwargs, words):
    message = collapse_message(dim=64, classes=256, **kwargs)
    assert message is not None and words in message
    assert "momentum" in message and "batch" in message and "temperature" in message


def test_monitor_warns_once_on_a_collapsed_batch():
    monitor = CollapseMonitor(dim=32, classes=64)
    healthy = embedding_spread(torch.randn(256, 32)).item()
    uniform_teacher = torch.randn(256, 64)  # entropy well inside (0.05, 0.98) log C at temperature 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning here would fail the test
        assert monitor.check(step=1, spread=healthy, entropy_value=teacher_entropy(uniform_teacher).item()) is None

    collapsed = embedding_spread(torch.ones(256, 32)).item()
    with pytest.warns(CollapseWarning, match="step 7: student embeddings are collapsing"):
        message = monitor.check(step=7, spread=collapsed)
    assert message is not None and "\n" not in message
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert monitor.check(step=8, spread=collapsed) is None  # not every step


def test_an_objective_with_negatives_gets_its_own_remedies():
    """SimCLR has no teacher: its spread message suggests what helps negatives, not a teacher momentum."""
    monitor = CollapseMonitor(dim=32, remedies=NEGATIVES_REMEDIES)
    with pytest.warns(CollapseWarning) as caught:
        message = monitor.check(step=3, spread=0.0)
    assert message == str(caught[0].message)
    assert "more negatives" in message and "ssl_temp" in message and "momentum" not in message
    # With no teacher distribution, the entropy is not judged, however low it would be.
    assert collapse_message(spread=0.7 * random_spread(32), dim=32, entropy_value=0.0, classes=None) is None


def test_cli_shows_a_collapse_warning_as_one_line():
    from rich.console import Console

    from detailclip_cli.cli.console import drive
    from detailclip_cli.core.training.loop import StepInfo

    def steps():
        for step in (1, 2):
            CollapseMonitor(dim=8).check(step=step, spread=0.0)  # a new monitor: it warns each time
            yield StepInfo(step=step, total_steps=2, losses={"loss": 1.0}, lr=1e-3, momentum=1.0,
                           images_per_sec=1.0, elapsed_s=1.0, extra={"spread": 0.0})

    buffer = io.StringIO()
    console = Console(file=buffer, width=200, force_terminal=False)
    drive(steps(), console=console, total=2, out_dir="runs/x", show=("spread",))
    lines = buffer.getvalue().splitlines()
    warned = [line for line in lines if line.startswith("warning: collapse ahead")]
    assert len(warned) == 2, lines
    assert any("spread 0" in line for line in lines if line.startswith("step 1/2"))
    assert lines[-1].startswith("done: 2 steps")
