"""Pictures of what a model does.

The one-image pictures of ``attn-map`` and ``reconstruct`` are drawn with Pillow alone
(:func:`attention_picture`, :func:`reconstruction_picture` return a PIL image), so those
commands never import matplotlib, whose import costs about 0.3 s of their start-up. The
figures that need axes, ticks and colour bars (:func:`confusion_figure`,
:func:`training_curves_figure`) return a matplotlib ``Figure`` and import matplotlib when
called: object API only (``matplotlib.figure.Figure`` on an Agg canvas), no pyplot state, no
global ``rcParams``; the caller saves and closes. Inputs are numpy arrays or tensors on the CPU.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageDraw, ImageFont

if TYPE_CHECKING:
    from matplotlib.figure import Figure

# -- one-image pictures, drawn with Pillow --------------------------------------------------------

PANEL_PX = 256  # panels are enlarged by a whole factor (nearest neighbour) to about this side
MARGIN_PX = 8
FONT_PX = 13
HEAT_ALPHA = 0.6  # the heat map's weight over the image
# matplotlib's "inferno" colour map (perceptually uniform, readable in grey), sampled at 17
# evenly spaced points as 8-bit RGB; the 256-entry table interpolates linearly between them
# (within 0.03 of matplotlib's own table, which tests/test_plots.py checks).
INFERNO_STOPS = (
    (0, 0, 4), (11, 7, 36), (33, 12, 74), (61, 9, 101), (87, 16, 110), (113, 25, 110), (138, 34, 106),
    (163, 44, 97), (188, 55, 84), (210, 70, 68), (228, 90, 49), (241, 115, 29), (249, 142, 9),
    (252, 172, 17), (249, 203, 53), (242, 234, 105), (252, 255, 164),
)


def colour_table(stops: Sequence[tuple[int, int, int]], size: int = 256) -> np.ndarray:
    """A colour map as a lookup table: ``size`` RGB rows in [0, 1], linear between evenly spaced stops.

    Returns:
        (size, 3) float32.
    """
    points = np.asarray(stops, dtype=np.float64) / 255.0  # (S, 3)
    at = np.linspace(0.0, 1.0, size)
    where = np.linspace(0.0, 1.0, len(points))
    return np.stack([np.interp(at, where, points[:, c]) for c in range(3)], axis=1).astype(np.float32)


INFERNO = colour_table(INFERNO_STOPS)


@dataclass(frozen=True)
class Panel:
    """One picture of a sheet.

    Attributes:
        title: shown above it (may hold a newline).
        pixels: (H, W, 3) float in [0, 1].
    """

    title: str
    pixels: np.ndarray


def _hwc(image) -> np.ndarray:
    """(3, H, W) or (H, W, 3) tensor/array in [0, 1] -> (H, W, 3) float array."""
    array = np.asarray(image.detach().cpu() if hasattr(image, "detach") else image, dtype=np.float32)
    if array.ndim == 3 and array.shape[0] == 3 and array.shape[-1] != 3:
        array = array.transpose(1, 2, 0)
    return np.clip(array, 0.0, 1.0)


def _grid(values) -> np.ndarray:
    return np.asarray(values.detach().cpu() if hasattr(values, "detach") else values, dtype=np.float32)


def _stretch(grid: np.ndarray, height: int, width: int) -> np.ndarray:
    """A patch grid over the image, nearest neighbour: (gh, gw, ...) -> (height, width, ...)."""
    gh, gw = grid.shape[:2]
    rows = np.arange(height) * gh // height
    cols = np.arange(width) * gw // width
    return grid[rows[:, None], cols[None, :]]


def heat_colours(scores: np.ndarray, table: np.ndarray = INFERNO) -> np.ndarray:
    """Scores as colours: scaled to [0, 1] over their own minimum and maximum (as matplotlib's
    ``imshow`` scales them; a constant map takes the lowest colour), then looked up in ``table``.

    Args:
        scores: (gh, gw).
        table: (N, 3) colours, lowest first.

    Returns:
        (gh, gw, 3) float in [0, 1].
    """
    lo, hi = float(scores.min()), float(scores.max())
    unit = (scores - lo) / (hi - lo) if hi > lo else np.zeros_like(scores)
    index = np.clip((unit * len(table)).astype(np.int64), 0, len(table) - 1)  # the top value gets the last row
    return table[index]


def attention_panels(image, scores, removed, *, per_head=None, keep_ratio: float | None = None,
                     block_size: int | None = None) -> list[Panel]:
    """The panels of :func:`attention_picture`.

    Args:
        image: (3, H, W) or (H, W, 3) pixels in [0, 1], the model's view of the input.
        scores: (gh, gw) removal scores (mean over heads).
        removed: (gh, gw) bool, True where the patch is removed.
        per_head: optional (heads, gh, gw); one more panel per head.
        keep_ratio, block_size: shown in the mask panel's title.

    Returns:
        image; the heat map over it (``HEAT_ALPHA`` of the colour); the removal mask (removed
        patches faded to grey, a trace of the image left for orientation; kept ones untouched);
        then one heat map per head when given.
    """
    img = _hwc(image)
    h, w = img.shape[:2]
    removed = _grid(removed).astype(bool)

    def over_image(grid) -> np.ndarray:
        return (1.0 - HEAT_ALPHA) * img + HEAT_ALPHA * _stretch(heat_colours(_grid(grid)), h, w)

    pixel_removed = _stretch(removed, h, w)  # (H, W)
    masked = img.copy()
    masked[pixel_removed] = 0.25 * masked[pixel_removed] + 0.75 * 0.5
    kept = int((~removed).sum())
    detail = f" (keep {keep_ratio:g}, block {block_size})" if keep_ratio is not None and block_size else ""
    panels = [Panel("image", img), Panel("[CLS] attention", over_image(scores)),
              Panel(f"kept {kept}/{removed.size} patches{detail}", masked)]
    if per_head is not None:
        panels += [Panel(f"head {i}", over_image(head)) for i, head in enumerate(_grid(per_head))]
    return panels


def attention_picture(image, scores, removed, *, per_head=None, title: str = "",
                      keep_ratio: float | None = None, block_size: int | None = None) -> Image.Image:
    """The [CLS] attention over an image, and which patches token removal keeps.

    Args:
        image, scores, removed, per_head, keep_ratio, block_size: as for :func:`attention_panels`.
        title: above the panels (e.g. the file name).

    Returns:
        An RGB picture of the panels, at most four to a row.
    """
    panels = attention_panels(image, scores, removed, per_head=per_head, keep_ratio=keep_ratio,
                              block_size=block_size)
    return compose(panels, title=title, cols=min(len(panels), 4))


RECONSTRUCTION_CAPTION = (
    "The decoder predicts per-patch normalised pixels; predictions were mapped back using each "
    "patch's true mean and std, so colour and brightness of removed patches come from the original."
)


def reconstruction_panels(original, kept, recon, pasted, *, mse: float | None = None,
                          psnr: float | None = None) -> list[Panel]:
    """The panels of :func:`reconstruction_picture`: original, kept patches, reconstruction (its
    title with MSE and PSNR when given), reconstruction with the kept patches pasted back."""
    score = f"\nMSE {mse:.4f}, PSNR {psnr:.1f} dB" if mse is not None and psnr is not None else ""
    return [Panel("original", _hwc(original)), Panel("kept patches", _hwc(kept)),
            Panel(f"reconstruction{score}", _hwc(recon)), Panel("reconstruction + kept", _hwc(pasted))]


def reconstruction_picture(original, kept, recon, pasted, *, title: str = "", mse: float | None = None,
                           psnr: float | None = None, caption: str = RECONSTRUCTION_CAPTION) -> Image.Image:
    """Four panels in a row: original, kept patches, reconstruction, reconstruction with kept patches pasted back.

    Args:
        original, kept, recon, pasted: (3, H, W) or (H, W, 3) pixels in [0, 1].
        title: above the panels (e.g. the file name and strategy).
        mse, psnr: errors on removed patches, shown in the reconstruction panel's title.
        caption: a note under the panels (how normalised predictions became pixels).
    """
    panels = reconstruction_panels(original, kept, recon, pasted, mse=mse, psnr=psnr)
    return compose(panels, title=title, caption=caption, cols=4)


def _font(size: int = FONT_PX) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """Pillow's own font (a scalable one where Pillow has FreeType, else its small bitmap font)."""
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, ValueError, OSError, ImportError):  # an old Pillow, or one built without FreeType
        return ImageFont.load_default()


def _wrap(draw: ImageDraw.ImageDraw, text: str, font, width: int) -> list[str]:
    """``text`` in lines no wider than ``width`` px: its own line breaks kept, words moved down,
    a word longer than a line cut."""
    lines: list[str] = []
    for paragraph in text.split("\n"):
        line = ""
        for word in paragraph.split(" "):
            trial = f"{line} {word}" if line else word
            if draw.textlength(trial, font=font) <= width:
                line = trial
                continue
            if line:
                lines.append(line)
            while draw.textlength(word, font=font) > width and len(word) > 1:
                cut = max(1, int(len(word) * width / draw.textlength(word, font=font)))
                lines.append(word[:cut])
                word = word[cut:]
            line = word
        lines.append(line)
    return lines


def compose(panels: Sequence[Panel], *, title: str = "", caption: str = "", cols: int | None = None) -> Image.Image:
    """Lay panels out on a white sheet: ``title`` on top, each panel under its own title, ``cols``
    panels to a row, ``caption`` at the bottom (both wrapped to the sheet's width).

    Every panel must have the same size; each is enlarged by the same whole factor (nearest
    neighbour, so patch edges stay sharp) to about :data:`PANEL_PX`.
    """
    if not panels:
        raise ValueError("no panels to draw")
    h, w = panels[0].pixels.shape[:2]
    if any(p.pixels.shape[:2] != (h, w) for p in panels):
        raise ValueError("panels must all have the same size")
    cols = max(1, min(cols or len(panels), len(panels)))
    rows = -(-len(panels) // cols)
    factor = max(1, round(PANEL_PX / max(h, w)))
    ph, pw = h * factor, w * factor
    font = _font()
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    line_h = round(FONT_PX * 1.3)
    sheet_w = cols * pw + (cols + 1) * MARGIN_PX
    text_w = sheet_w - 2 * MARGIN_PX
    title_lines = _wrap(measure, title, font, text_w) if title else []
    caption_lines = _wrap(measure, caption, font, text_w) if caption else []
    panel_lines = [_wrap(measure, p.title, font, pw) for p in panels]
    label_h = max(len(lines) for lines in panel_lines) * line_h
    top = MARGIN_PX + len(title_lines) * line_h
    cell_h = label_h + ph + MARGIN_PX
    sheet_h = top + rows * cell_h + len(caption_lines) * line_h + MARGIN_PX

    sheet = Image.new("RGB", (sheet_w, sheet_h), "white")
    draw = ImageDraw.Draw(sheet)

    def centred(lines: list[str], left: int, width: int, y: int) -> None:
        for i, line in enumerate(lines):
            x = left + (width - draw.textlength(line, font=font)) / 2
            draw.text((x, y + i * line_h), line, fill="black", font=font)

    centred(title_lines, MARGIN_PX, text_w, MARGIN_PX)
    for i, (panel, lines) in enumerate(zip(panels, panel_lines)):
        left = MARGIN_PX + (i % cols) * (pw + MARGIN_PX)
        y = top + (i // cols) * cell_h
        centred(lines, left, pw, y + label_h - len(lines) * line_h)  # titles sit on the panel
        pixels = (np.clip(panel.pixels, 0.0, 1.0) * 255.0).round().astype(np.uint8)
        picture = Image.fromarray(np.ascontiguousarray(pixels), "RGB").resize((pw, ph), Image.NEAREST)
        sheet.paste(picture, (left, y + label_h))
    centred(caption_lines, MARGIN_PX, text_w, top + rows * cell_h)
    return sheet


# -- figures with axes, drawn with matplotlib -------------------------------------------------------


def _new_figure(*, figsize: tuple[float, float]) -> Figure:
    """An empty constrained-layout Figure on an Agg canvas (matplotlib imported only here)."""
    # imported on use, not at the top: attn-map and reconstruct never need it (start-up time)
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, layout="constrained")
    FigureCanvasAgg(fig)  # draw with Agg, whatever backend pyplot may have chosen elsewhere
    return fig


def confusion_figure(confusion, classes: Sequence[str], *, title: str = "zero-shot confusion matrix",
                     normalize: bool = True) -> Figure:
    """A confusion matrix (rows = true class, columns = predicted), row-normalised by default.

    Args:
        confusion: (C, C) counts.
        classes: C class names.
        title: axes title.
        normalize: colour by the fraction of each true class (counts are still written in cells
            when there are few enough classes to read them).
    """
    counts = _grid(confusion)
    c = len(classes)
    shown = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1) if normalize else counts
    side = min(max(4.0, 0.45 * c + 2.0), 20.0)
    fig = _new_figure(figsize=(side + 1.0, side))
    ax = fig.subplots()
    im = ax.imshow(shown, cmap="Blues", vmin=0.0, vmax=1.0 if normalize else None, interpolation="nearest")
    fig.colorbar(im, ax=ax, fraction=0.046, label="fraction of true class" if normalize else "count")
    ax.set_xticks(range(c), labels=classes, rotation=90 if c > 6 else 45, ha="center" if c > 6 else "right",
                  fontsize=8)
    ax.set_yticks(range(c), labels=classes, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    if c <= 20:
        top = 1.0 if normalize else float(shown.max() or 1)
        for i in range(c):
            for j in range(c):
                if counts[i, j]:
                    dark = shown[i, j] > 0.5 * top  # white text on the darker half of the colour map
                    ax.text(j, i, f"{int(counts[i, j])}", ha="center", va="center", fontsize=7,
                            color="white" if dark else "black")
    return fig


def training_curves_figure(runs: dict[str, list[dict]], *, keys: Sequence[str] | None = None) -> Figure:
    """Training curves of one or more runs, overlaid: one panel per logged quantity.

    Args:
        runs: run name -> its ``metrics.jsonl`` records (each with ``step``).
        keys: the quantities to draw; by default every numeric key any run logged (losses first,
            then lr, momentum and the rest), except ``step`` and timing fields.

    Returns:
        A Figure with one axis per key, x = step, one line per run.
    """
    skip = {"step", "elapsed_s", "images_per_sec"}
    if keys is None:
        seen: dict[str, None] = {}
        for records in runs.values():
            for record in records:
                for k, v in record.items():
                    if k not in skip and isinstance(v, (int, float)) and not isinstance(v, bool):
                        seen.setdefault(k, None)
        first = [k for k in ("loss", "clip", "rec", "cls", "patch") if k in seen]
        keys = first + [k for k in seen if k not in first]
    keys = list(keys)
    if not keys:
        raise ValueError("no numeric metrics to plot")
    cols = min(3, len(keys))
    rows = -(-len(keys) // cols)
    fig = _new_figure(figsize=(4.2 * cols, 2.8 * rows))
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).reshape(-1)
    for ax, key in zip(axes, keys):
        for name, records in runs.items():
            points = [(r["step"], r[key]) for r in records if isinstance(r.get(key), (int, float))]
            if points:
                xs, ys = zip(*points)
                ax.plot(xs, ys, label=name, linewidth=1.2)
        ax.set_title(key, fontsize=10)
        ax.set_xlabel("step", fontsize=8)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
    for ax in axes[len(keys):]:
        ax.set_axis_off()
    if len(runs) > 1:
        axes[0].legend(fontsize=7)
    return fig
