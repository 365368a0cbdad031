"""Pictures of what a model does. Each function returns a matplotlib ``Figure``.

Object API only (``matplotlib.figure.Figure`` on an Agg canvas): no pyplot state, no global
``rcParams``; the caller saves and closes. Inputs are numpy arrays or tensors on the CPU.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

PANEL_INCHES = 3.0


def _new_figure(rows: int, cols: int, *, extra_height: float = 0.0) -> tuple[Figure, np.ndarray]:
    fig = Figure(figsize=(PANEL_INCHES * cols, PANEL_INCHES * rows + extra_height), layout="constrained")
    FigureCanvasAgg(fig)  # draw with Agg, whatever backend pyplot may have chosen elsewhere
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).reshape(-1)
    for ax in axes:
        ax.set_axis_off()
    return fig, axes


def _hwc(image) -> np.ndarray:
    """(3, H, W) or (H, W, 3) tensor/array in [0, 1] -> (H, W, 3) float array."""
    array = np.asarray(image.detach().cpu() if hasattr(image, "detach") else image, dtype=np.float32)
    if array.ndim == 3 and array.shape[0] == 3 and array.shape[-1] != 3:
        array = array.transpose(1, 2, 0)
    return np.clip(array, 0.0, 1.0)


def _grid(values) -> np.ndarray:
    return np.asarray(values.detach().cpu() if hasattr(values, "detach") else values, dtype=np.float32)


def _extent(image: np.ndarray) -> tuple[float, float, float, float]:
    h, w = image.shape[:2]
    return (0, w, h, 0)  # patch grids stretch over the image, nearest-neighbour


def attention_figure(image, scores, removed, *, per_head=None, title: str = "",
                     keep_ratio: float | None = None, block_size: int | None = None) -> Figure:
    """The [CLS] attention over an image, and which patches token removal keeps.

    Args:
        image: (3, H, W) or (H, W, 3) pixels in [0, 1], the model's view of the input.
        scores: (gh, gw) removal scores (mean over heads).
        removed: (gh, gw) bool, True where the patch is removed.
        per_head: optional (H, gh, gw); adds one panel per head.
        title: figure title (e.g. the file name).
        keep_ratio, block_size: shown in the mask panel's title.

    Returns:
        A figure with panels: image, attention heat map over the image, removal mask
        (kept patches shown, removed greyed), then one heat map per head when given.
    """
    img = _hwc(image)
    scores, removed = _grid(scores), _grid(removed).astype(bool)
    heads = _grid(per_head) if per_head is not None else None
    n_panels = 3 + (len(heads) if heads is not None else 0)
    cols = min(n_panels, 4)
    rows = -(-n_panels // cols)
    fig, axes = _new_figure(rows, cols)
    extent = _extent(img)

    axes[0].imshow(img)
    axes[0].set_title("image")

    axes[1].imshow(img)
    axes[1].imshow(scores, cmap="inferno", alpha=0.6, extent=extent, interpolation="nearest")
    axes[1].set_title("[CLS] attention")

    # Removed patches faded to grey (a trace of the image left for orientation), kept untouched.
    gh, gw = removed.shape
    h, w = img.shape[:2]
    pixel_removed = np.kron(removed, np.ones((h // gh, w // gw), dtype=bool)).astype(bool)
    masked = img.copy()
    masked[pixel_removed] = 0.25 * masked[pixel_removed] + 0.75 * 0.5
    axes[2].imshow(masked)
    kept = int((~removed).sum())
    detail = f" (keep {keep_ratio:g}, block {block_size})" if keep_ratio is not None and block_size else ""
    axes[2].set_title(f"kept {kept}/{removed.size} patches{detail}", fontsize=9)

    if heads is not None:
        for i, head in enumerate(heads):
            ax = axes[3 + i]
            ax.imshow(img)
            ax.imshow(head, cmap="inferno", alpha=0.6, extent=extent, interpolation="nearest")
            ax.set_title(f"head {i}")
    if title:
        fig.suptitle(title, fontsize=10)
    return fig


RECONSTRUCTION_CAPTION = (
    "The decoder predicts per-patch normalised pixels; predictions were mapped back using each "
    "patch's true mean and std, so colour and brightness of removed patches come from the original."
)


def reconstruction_figure(original, kept, recon, pasted, *, title: str = "", mse: float | None = None,
                          psnr: float | None = None, caption: str = RECONSTRUCTION_CAPTION) -> Figure:
    """Four panels: original, kept patches, reconstruction, reconstruction with kept patches pasted back.

    Args:
        original, kept, recon, pasted: (3, H, W) or (H, W, 3) pixels in [0, 1].
        title: figure title (e.g. the file name and strategy).
        mse, psnr: errors on removed patches, shown in the reconstruction panel's title.
        caption: a note under the panels (how normalised predictions became pixels).
    """
    fig, axes = _new_figure(1, 4, extra_height=0.6)
    score = f"\nMSE {mse:.4f}, PSNR {psnr:.1f} dB" if mse is not None and psnr is not None else ""
    panels = [
        (original, "original"),
        (kept, "kept patches"),
        (recon, f"reconstruction{score}"),
        (pasted, "reconstruction + kept"),
    ]
    for ax, (image, name) in zip(axes, panels):
        ax.imshow(_hwc(image))
        ax.set_title(name, fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    if caption:
        fig.text(0.5, 0.01, caption, ha="center", va="bottom", fontsize=7, wrap=True)
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
    fig = Figure(figsize=(side + 1.0, side), layout="constrained")
    FigureCanvasAgg(fig)
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
    fig = Figure(figsize=(4.2 * cols, 2.8 * rows), layout="constrained")
    FigureCanvasAgg(fig)
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
