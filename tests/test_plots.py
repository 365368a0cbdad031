"""Plot functions return figures with the right panels, without touching pyplot or rcParams."""

from __future__ import annotations

import sys

import matplotlib
import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

from detailclip_cli import plots


@pytest.fixture
def untouched_matplotlib():
    """The plots must leave matplotlib's global state alone (no pyplot import, no rcParams edits)."""
    pyplot_before = "matplotlib.pyplot" in sys.modules
    params = matplotlib.rcParams.copy()  # copy(), not dict(): reading "backend" would import pyplot
    yield
    assert matplotlib.rcParams.copy() == params
    if not pyplot_before:
        assert "matplotlib.pyplot" not in sys.modules


def visible_axes(fig: Figure):
    return [ax for ax in fig.axes if ax.has_data()]


def titles(fig: Figure) -> list[str]:
    return [ax.get_title() for ax in visible_axes(fig)]


def test_attention_figure_panels(untouched_matplotlib, tmp_path):
    image = torch.rand(3, 32, 32)
    scores = torch.rand(4, 4)
    removed = torch.zeros(4, 4, dtype=torch.bool)
    removed[:2] = True
    fig = plots.attention_figure(image, scores, removed, title="cat.png", keep_ratio=0.5, block_size=2)
    assert isinstance(fig, Figure)
    assert titles(fig) == ["image", "[CLS] attention", "kept 8/16 patches (keep 0.5, block 2)"]
    assert fig.get_suptitle() == "cat.png"
    # The mask panel greys removed patches and leaves kept ones as they were.
    shown = visible_axes(fig)[2].get_images()[0].get_array()
    assert np.allclose(shown[16:], image.permute(1, 2, 0).numpy()[16:])
    assert not np.allclose(shown[:16], image.permute(1, 2, 0).numpy()[:16])

    heads = plots.attention_figure(image.permute(1, 2, 0).numpy(), scores, removed, per_head=torch.rand(3, 4, 4))
    assert titles(heads)[3:] == ["head 0", "head 1", "head 2"]
    heads.savefig(tmp_path / "a.png")
    assert (tmp_path / "a.png").stat().st_size > 0


def test_reconstruction_figure_panels(untouched_matplotlib):
    panels = [torch.rand(3, 16, 16) for _ in range(4)]
    fig = plots.reconstruction_figure(*panels, title="x.png", mse=0.01, psnr=20.0)
    assert len(visible_axes(fig)) == 4
    assert titles(fig) == ["original", "kept patches", "reconstruction\nMSE 0.0100, PSNR 20.0 dB",
                           "reconstruction + kept"]
    caption = " ".join(t.get_text() for t in fig.texts)
    assert "per-patch normalised" in caption and "true mean and std" in caption


def test_confusion_figure(untouched_matplotlib):
    conf = torch.tensor([[3, 1], [0, 4]])
    fig = plots.confusion_figure(conf, ["cat", "dog"], title="zs")
    ax = visible_axes(fig)[0]
    assert ax.get_title() == "zs" and ax.get_xlabel() == "predicted" and ax.get_ylabel() == "true"
    assert [t.get_text() for t in ax.get_xticklabels()] == ["cat", "dog"]
    assert sorted(t.get_text() for t in ax.texts) == ["1", "3", "4"]  # zero cells left blank
    assert np.allclose(ax.get_images()[0].get_array(), [[0.75, 0.25], [0.0, 1.0]])
