"""The ``data`` section: what the training data pipeline delivers against what a step consumes.

Images/s of the training loop's own ``DataLoader`` (two augmented views + tokens) for each
worker count, the images/s one core prepares (:func:`detailclip_cli.tools.loader.measure`, from
500 px JPEG photos), and the cores per device that feeding a DetailCLIP step takes.
"""

from __future__ import annotations

import dataclasses
import math
import time

import torch

from detailclip_cli.core.config import TrainConfig
from detailclip_cli.core.data import TwoViewDataset, open_source
from detailclip_cli.core.training.loop import iterate_batches
from detailclip_cli.core.training.trainset import train_augment
from detailclip_cli.tools.bench.figures import median, rounded_ratio
from detailclip_cli.tools.bench.session import Session
from detailclip_cli.tools.costs import round_sig, spread
from detailclip_cli.tools.loader import measure

LOADER_MIN_IMAGES = 64  # images per timed data-loader window
LOADER_SECONDS = 2.0  # seconds per figure of the one-core transform measurement


def loader_images_per_s(dataset, cfg: TrainConfig, *, repeats: int) -> list[float]:
    """Images/s the training loop's batches arrive at, one figure per timed window.

    Uses the loop's own :func:`iterate_batches`. The first batch (worker start-up) and the ones
    the workers prefetched meanwhile are skipped; the windows stay within one epoch, so no
    timed window includes starting the workers again.
    """
    per_epoch = len(dataset) // cfg.batch_size
    skip = 1 + 2 * cfg.workers  # DataLoader prefetches 2 batches per worker
    per_window = max(1, math.ceil(LOADER_MIN_IMAGES / cfg.batch_size))
    per_window = max(1, min(per_window, (per_epoch - skip) // repeats))
    batches = iterate_batches(dataset, cfg, 0)
    try:
        for _ in range(min(skip, per_epoch - 1)):
            next(batches)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            for _ in range(per_window):
                next(batches)
            times.append(time.perf_counter() - t0)
    finally:
        batches.close()
    return [per_window * cfg.batch_size / t for t in times]


def loader_per_core(image_size: int, seconds: float = LOADER_SECONDS) -> dict[str, float]:
    """:func:`detailclip_cli.tools.loader.measure` at ``image_size``: images/s one core prepares.

    ``measure`` runs on one thread, as a ``DataLoader`` worker does; this process's thread count
    is put back afterwards, so later sections run as before.
    """
    threads = torch.get_num_threads()
    try:
        return measure(image_size=image_size, seconds=seconds)
    finally:
        torch.set_num_threads(threads)


def data(session: Session) -> dict:
    """Loader images/s per worker count against the step's, and the cores it takes to feed a step."""
    step = session.step("detailclip")
    v = step.model.cfg.vision
    samples = open_source(session.cfg.data, split="train", streaming=False)
    dataset = TwoViewDataset(samples, image_size=v.image_size, mean=v.mean, std=v.std,
                             aug=train_augment(v.image_size, samples.chiral), tokenize=step.model.tokenize,
                             seed=session.cfg.seed)
    rows, spreads = [], {}
    for workers in session.cfg.workers:
        session.on_stage(f"data loader, {workers} workers")
        rates = loader_images_per_s(dataset, dataclasses.replace(step.cfg, workers=workers),
                                    repeats=session.cfg.repeats)
        rows.append({"workers": workers, "images_per_s": round_sig(median(rates))})
        spreads[f"workers_{workers}"] = spread(rates)
    consumed = session.batch_size / session.step_seconds("detailclip")
    for row in rows:
        row["vs_step"] = rounded_ratio(row["images_per_s"], consumed)
    session.on_stage("images one core prepares")
    per_core = loader_per_core(v.image_size)
    return {"rows": rows, "step_images_per_s": round_sig(consumed), "image_size": v.image_size,
            "loader_per_core": per_core,
            # Feeding a step that eats `consumed` images/s takes this many cores at that rate each.
            "cores_per_device": rounded_ratio(consumed, per_core["ours_two_views"]),
            "spread": spreads}
