"""Measure what training, the data pipeline, inference and start-up cost, in one record.

Every time is measured ``repeats`` times after ``warmup`` untimed runs, in one process on one
preset, batch and device. Figures that are compared are timed in rounds, back to back (one of
each per round, :func:`~detailclip_cli.tools.costs.interleaved_runs`), and a ratio is taken
round by round, so a load that drifts on a shared machine hits both sides of it alike. Each
figure is the median; the section's ``spread`` gives its min, quartiles and max
(:func:`~detailclip_cli.tools.costs.spread`), so one lucky run shows as an outlier instead of
passing a target: targets are judged on the median. The result is a plain dict (one JSON
record); drawing it is the CLI's job.

Sections (each can be switched on alone), and the module that measures each:

- ``train`` (``step``): a full training step (forward, loss check, backward, AdamW, EMA) of
  plain CLIP (removal none, no decoder, no head) and of DetailCLIP (the preset's defaults),
  alternating.
- ``split`` (``step``): where a DetailCLIP step's time goes. The step runs as in ``train`` (the
  objective's real forward and backward); the stages the objective marks in its forward
  (:func:`~detailclip_cli.core.method.stages.stage`: teacher, student encoder, text tower,
  decoder, heads and losses) and the step's own (loss check, backward, AdamW, EMA) each end
  with the device synchronised and a stopwatch read; their sum is compared with the same
  step's wall time (``untimed``: the part no stage covers) and with the ``train`` step.
- ``keep`` (``step``): the student encoder's forward + backward at keep ratios 1.0, 0.5 and 0.25.
- ``flops`` (``step``): FLOPs of a step's forward + backward (``FlopCounterMode``), the achieved
  rate as a fraction of this machine's dense matmul rate measured in the same rounds as the
  steps (MFU), and the machinery overhead ``(time ratio) / (FLOP ratio)`` of DetailCLIP over CLIP.
- ``scores`` (``step``): the teacher's forward with [CLS] attention scores vs its plain forward.
- ``data`` (``data``): images/s the training ``DataLoader`` delivers (two augmented views +
  tokens) for 0, 1, 2 workers vs images/s a DetailCLIP step consumes; images/s one core
  prepares (:func:`detailclip_cli.tools.loader.measure`, from 500 px JPEG photos) and the cores
  per device that feeding the step takes.
- ``inference`` (``inference``): zero-shot image encoding, ours vs the same architecture run by
  open_clip.
- ``bulk`` (``inference``): zero-shot over ``bulk_images`` generated demo images (64 px PNG
  files), ours (``zero-shot``'s own path: ``DataLoader`` workers, batches) vs open_clip's
  preprocessing + ``encode_image`` loop on the shipped model exported to open_clip; start-up
  excluded.
- ``startup`` (``startup``): ``detailclip --help`` and each model-using command on one image
  (``zero-shot``, ``attn-map``, ``reconstruct``, ``embed``) vs ``python -c "import torch"``
  (fresh processes, one of each per round).
- ``memory`` (``step``): peak memory a training step adds to a built model (a fresh process each).

The rest of the package: ``config`` (the sections, :class:`BenchConfig`), ``session`` (what the
sections share: built steps, step times, demo images), ``figures`` (medians and per-round
ratios), ``targets`` (the speed targets, judged on the medians), ``run`` (:func:`run_bench`).

"Images" are training samples: each has two views, so a step over B images encodes 2B views.
"""

from __future__ import annotations

from detailclip_cli.tools.bench.config import (BULK_IMAGES, CPU_BATCH_SIZE, LOADER_WORKERS, SECTIONS, BenchConfig,
                                               parse_sections)
from detailclip_cli.tools.bench.data import LOADER_MIN_IMAGES, LOADER_SECONDS, loader_images_per_s, loader_per_core
from detailclip_cli.tools.bench.inference import BULK_BATCH, BULK_LABELS, bulk_zero_shot_runs, open_clip_twins
from detailclip_cli.tools.bench.run import run_bench
from detailclip_cli.tools.bench.session import demo_images
from detailclip_cli.tools.bench.startup import STARTUP_COMMANDS, startup_seconds
from detailclip_cli.tools.bench.step import KEEP_RATIOS, STAGES, Laps, encoder_pass, staged_step
from detailclip_cli.tools.bench.targets import STARTUP_EXTRA_S, TARGETS, check_targets

__all__ = [
    "BULK_BATCH", "BULK_IMAGES", "BULK_LABELS", "CPU_BATCH_SIZE", "KEEP_RATIOS", "LOADER_MIN_IMAGES",
    "LOADER_SECONDS", "LOADER_WORKERS", "SECTIONS", "STAGES", "STARTUP_COMMANDS", "STARTUP_EXTRA_S", "TARGETS",
    "BenchConfig", "Laps", "bulk_zero_shot_runs", "check_targets", "demo_images", "encoder_pass",
    "loader_images_per_s", "loader_per_core", "open_clip_twins", "parse_sections", "run_bench", "staged_step",
    "startup_seconds",
]
