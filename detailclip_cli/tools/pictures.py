"""The pictures a training run's loggers show (``--log-images-every``): the [CLS] attention map and
the reconstruction of a fixed validation batch, drawn by the probes ``attn-map`` and
``reconstruct`` use (:mod:`detailclip_cli.core.use.probes`), so the logger shows what those
commands would on the same images.

Beside the library (as ``bench`` is): the loop knows pictures only as a function of the model
(:data:`~detailclip_cli.core.training.loggers.Pictures`); this module makes one for a ``--data``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from detailclip_cli.core.data import DataError, MapSource, open_source
from detailclip_cli.core.training.loggers import Pictures
from detailclip_cli.core.use.batching import load_images, to_pixels
from detailclip_cli.core.use.probes import attention_maps, reconstruct

PICTURE_IMAGES = 4  # images in the fixed batch


def fixed_batch_paths(data: str | Path, count: int = PICTURE_IMAGES) -> list[Path]:
    """The first ``count`` images of the data's validation split (its training split when it has none).

    Returns an empty list for data that is not read whole (tar shards): no pictures then.
    """
    for split in ("val", "train"):
        try:
            source = open_source(data, split=split, images_only=True, streaming=True)
        except DataError:
            continue
        if isinstance(source, MapSource) and len(source):
            return [source[i].image for i in range(min(count, len(source)))]
        return []
    return []


def _row(images: torch.Tensor) -> np.ndarray:
    """(B, 3, S, S) pixels in [0, 1] -> (S, B * S, 3) uint8, the images side by side."""
    return (images.permute(2, 0, 3, 1).flatten(1, 2).clamp(0, 1) * 255).round().byte().cpu().numpy()


def _heat(scores: torch.Tensor, size: int) -> torch.Tensor:
    """(B, gh, gw) scores -> (B, 3, S, S) a red heat map, each image's scores scaled to [0, 1]."""
    lo = scores.flatten(1).min(1).values.view(-1, 1, 1)
    hi = scores.flatten(1).max(1).values.view(-1, 1, 1)
    heat = ((scores - lo) / (hi - lo).clamp(min=1e-12))[:, None]  # (B, 1, gh, gw)
    heat = torch.nn.functional.interpolate(heat, size=(size, size), mode="nearest")
    return torch.cat([heat, heat * 0.3, 1 - heat], dim=1)  # (B, 3, S, S)


def training_pictures(data: str | Path) -> Pictures | None:
    """A :data:`Pictures` function for a run on ``data``, or None when it has no images to show.

    It shows, one row each over the fixed batch: ``attention/map`` (the images, then the
    [CLS]-attention heat map), and ``reconstruction/pasted`` (the images with the removed
    patches greyed, then the decoder's prediction pasted into them), the latter for a model
    with a decoder.
    """
    paths = fixed_batch_paths(data)
    if not paths:
        return None

    def pictures(model: torch.nn.Module) -> dict[str, np.ndarray]:
        images = load_images(paths, model)  # (B, 3, S, S) normalised
        v = model.cfg.vision
        original = to_pixels(images, v.mean, v.std)
        maps = attention_maps(model, images)
        out = {"attention/map": np.concatenate([_row(original), _row(_heat(maps.scores, v.image_size))])}
        if model.decoder is not None:
            rec = reconstruct(model, images)
            out["reconstruction/pasted"] = np.concatenate([_row(rec.kept), _row(rec.pasted)])
        return out

    return pictures
