"""The one-image pictures (Pillow) hold the right panels; the matplotlib figures touch neither pyplot nor rcParams."""

from __future__ import annotations

import sys

import matplotlib
import numpy as np
import pytest
import torch
from matplotlib.figure import Figure
from PIL import Image

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


# -- the one-image pictures (Pillow) ---------------------------------------------------------------


def test_colour_table_follows_matplotlibs_inferno():
    """The built-in table stands in for matplotlib's (so attn-map needs no matplotlib): within 0.03."""
    ours = plots.INFERNO
    theirs = np.asarray(matplotlib.colormaps["inferno"](np.linspace(0, 1, 256))[:, :3], dtype=np.float32)
    assert ours.shape == (256, 3)
    assert np.abs(ours - theirs).max() < 0.03
    assert np.allclose(ours[[0, -1]], np.array([(0, 0, 4), (252, 255, 164)]) / 255)  # the stops' ends exactly


def test_heat_colours_scale_over_the_scores_own_range():
    table = np.linspace(0, 1, 4)[:, None].repeat(3, axis=1)  # 4 greys
    scores = np.array([[2.0, 3.0], [4.0, 6.0]])  # (x - 2) / 4 = 0, 0.25, 0.5, 1 -> rows 0, 1, 2, 3
    assert np.allclose(plots.heat_colours(scores, table)[..., 0], [[0, 1 / 3], [2 / 3, 1]])
    assert np.allclose(plots.heat_colours(np.full((2, 2), 5.0), table), 0.0)  # constant: the lowest colour


def test_attention_panels(tmp_path):
    image = torch.rand(3, 32, 32)
    scores = torch.arange(16.0).view(4, 4)
    removed = torch.zeros(4, 4, dtype=torch.bool)
    removed[:2] = True
    panels = plots.attention_panels(image, scores, removed, keep_ratio=0.5, block_size=2)
    assert [p.title for p in panels] == ["image", "[CLS] attention", "kept 8/16 patches (keep 0.5, block 2)"]
    hwc = image.permute(1, 2, 0).numpy()
    assert np.allclose(panels[0].pixels, hwc)
    # The heat map: 0.6 of the colour of each 8 x 8 patch's score over 0.4 of the image.
    heat = panels[1].pixels
    assert np.allclose(heat[0, 0], 0.4 * hwc[0, 0] + 0.6 * plots.INFERNO[0])
    assert np.allclose(heat[31, 31], 0.4 * hwc[31, 31] + 0.6 * plots.INFERNO[255])
    assert np.allclose(heat[8, 15], 0.4 * hwc[8, 15] + 0.6 * plots.INFERNO[int(5 / 15 * 256)])
    # The mask panel greys removed patches (top two patch rows) and leaves kept ones as they were.
    masked = panels[2].pixels
    assert np.allclose(masked[16:], hwc[16:])
    assert np.allclose(masked[:16], 0.25 * hwc[:16] + 0.375)

    heads = plots.attention_panels(hwc, scores, removed, per_head=torch.rand(3, 4, 4))
    assert [p.title for p in heads][2:] == ["kept 8/16 patches", "head 0", "head 1", "head 2"]


def _panel_at(sheet: np.ndarray, pixels: np.ndarray) -> bool:
    """Whether ``sheet`` (uint8) holds ``pixels`` ((h, w, 3) in [0, 1]) enlarged by a whole factor somewhere."""
    h, w = pixels.shape[:2]
    want = (pixels * 255).round().astype(np.uint8)
    factor = max(1, round(plots.PANEL_PX / max(h, w)))
    big = want.repeat(factor, axis=0).repeat(factor, axis=1)
    hits = np.argwhere((sheet[:, :, 0] == big[0, 0, 0]) & (sheet[:, :, 1] == big[0, 0, 1])
                       & (sheet[:, :, 2] == big[0, 0, 2]))
    return any(np.array_equal(sheet[y:y + h * factor, x:x + w * factor], big) for y, x in hits)


def test_attention_picture_lays_out_every_panel(tmp_path):
    image, scores = torch.rand(3, 32, 32), torch.rand(4, 4)
    removed = torch.rand(4, 4) > 0.5
    picture = plots.attention_picture(image, scores, removed, per_head=torch.rand(3, 4, 4), title="cat.png",
                                      keep_ratio=0.5, block_size=2)
    assert isinstance(picture, Image.Image) and picture.mode == "RGB"
    side = 32 * round(plots.PANEL_PX / 32)  # 256: panels enlarged 8 times
    assert picture.width == 4 * side + 5 * plots.MARGIN_PX  # six panels: four to a row, two rows
    assert picture.height > 2 * side
    sheet = np.asarray(picture)
    for panel in plots.attention_panels(image, scores, removed, per_head=torch.rand(3, 4, 4))[:3]:
        assert _panel_at(sheet, panel.pixels)
    picture.save(tmp_path / "a.png")
    assert Image.open(tmp_path / "a.png").size == picture.size


def test_reconstruction_picture_panels():
    panels = [torch.rand(3, 16, 16) for _ in range(4)]
    named = plots.reconstruction_panels(*panels, mse=0.01, psnr=20.0)
    assert [p.title for p in named] == ["original", "kept patches", "reconstruction\nMSE 0.0100, PSNR 20.0 dB",
                                        "reconstruction + kept"]
    picture = plots.reconstruction_picture(*panels, title="x.png", mse=0.01, psnr=20.0)
    sheet = np.asarray(picture)
    assert picture.width == 4 * 256 + 5 * plots.MARGIN_PX
    assert all(_panel_at(sheet, p.pixels) for p in named)
    # The caption and titles add rows of text: without them the sheet is shorter.
    bare = plots.compose(named, cols=4)
    assert bare.height < picture.height


def test_compose_refuses_panels_of_different_sizes():
    with pytest.raises(ValueError, match="same size"):
        plots.compose([plots.Panel("a", np.zeros((4, 4, 3))), plots.Panel("b", np.zeros((4, 5, 3)))])


def test_wrap_keeps_lines_within_the_width():
    from PIL import ImageDraw

    draw = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    font = plots._font()
    lines = plots._wrap(draw, "a fairly long caption\nthat wraps " + "x" * 80, font, 100)
    assert all(draw.textlength(line, font=font) <= 100 for line in lines)
    assert lines[0].startswith("a fairly") and "".join(lines).replace(" ", "").startswith("afairlylongcaption")


def test_confusion_figure(untouched_matplotlib):
    conf = torch.tensor([[3, 1], [0, 4]])
    fig = plots.confusion_figure(conf, ["cat", "dog"], title="zs")
    ax = visible_axes(fig)[0]
    assert ax.get_title() == "zs" and ax.get_xlabel() == "predicted" and ax.get_ylabel() == "true"
    assert [t.get_text() for t in ax.get_xticklabels()] == ["cat", "dog"]
    assert sorted(t.get_text() for t in ax.texts) == ["1", "3", "4"]  # zero cells left blank
    assert np.allclose(ax.get_images()[0].get_array(), [[0.75, 0.25], [0.0, 1.0]])
