"""Measure what training, the data pipeline, inference and start-up cost, in one record.

Every time is measured ``repeats`` times after ``warmup`` untimed runs, in one process on one
preset, batch and device. Figures that are compared are timed in rounds, back to back (one of
each per round, :func:`~detailclip_cli.tools.costs.interleaved_runs`), and a ratio is taken
round by round, so a load that drifts on a shared machine hits both sides of it alike. Each
figure is the median; the section's ``spread`` gives its min, quartiles and max
(:func:`~detailclip_cli.tools.costs.spread`), so one lucky run shows as an outlier instead of
passing a target: targets are judged on the median. The result is a plain dict (one JSON
record); drawing it is the CLI's job.

Sections (each can be switched on alone):

- ``train``: a full training step (forward, loss check, backward, AdamW, EMA) of plain CLIP
  (removal none, no decoder, no head) and of DetailCLIP (the preset's defaults), alternating.
- ``split``: where a DetailCLIP step's time goes. The step runs as in ``train`` (the
  objective's real forward and backward); the stages the objective marks in its forward
  (:func:`~detailclip_cli.core.method.stages.stage`: teacher, student encoder, text tower,
  decoder, heads and losses) and the step's own (loss check, backward, AdamW, EMA) each end
  with the device synchronised and a stopwatch read; their sum is compared with the same
  step's wall time (``untimed``: the part no stage covers) and with the ``train`` step.
- ``keep``: the student encoder's forward + backward at keep ratios 1.0, 0.5 and 0.25.
- ``flops``: FLOPs of a step's forward + backward (``FlopCounterMode``), the achieved rate as a
  fraction of this machine's dense matmul rate measured in the same rounds as the steps (MFU),
  and the machinery overhead ``(time ratio) / (FLOP ratio)`` of DetailCLIP over CLIP.
- ``scores``: the teacher's forward with [CLS] attention scores vs its plain forward.
- ``data``: images/s the training ``DataLoader`` delivers (two augmented views + tokens) for
  0, 1, 2 workers vs images/s a DetailCLIP step consumes; images/s one core prepares
  (:func:`detailclip_cli.tools.loader.measure`, from 500 px JPEG photos) and the cores per
  device that feeding the step takes.
- ``inference``: zero-shot image encoding, ours vs the same architecture run by open_clip.
- ``bulk``: zero-shot over ``bulk_images`` generated demo images (64 px PNG files), ours
  (``zero-shot``'s own path: ``DataLoader`` workers, batches) vs open_clip's preprocessing +
  ``encode_image`` loop on the shipped model exported to open_clip; start-up excluded.
- ``startup``: ``detailclip --help`` and each model-using command on one image (``zero-shot``,
  ``attn-map``, ``reconstruct``, ``embed``) vs ``python -c "import torch"`` (fresh processes,
  one of each per round).
- ``memory``: peak memory a training step adds to a built model (a fresh process each).

"Images" are training samples: each has two views, so a step over B images encodes 2B views.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from detailclip_cli.core.config import ConfigError, ModelConfig, TrainConfig, load_preset
from detailclip_cli.core.data import TwoViewDataset, open_source
from detailclip_cli.core.device import resolve_device
from detailclip_cli.core.method import stages
from detailclip_cli.core.model.removal import num_kept, random_scores, remove_tokens
from detailclip_cli.core.store.export import export_model
from detailclip_cli.core.store.lookup import resolve_model
from detailclip_cli.core.store.openclip import from_open_clip
from detailclip_cli.core.training.loop import iterate_batches
from detailclip_cli.core.training.trainset import train_augment
from detailclip_cli.core.use.batching import default_workers, iter_image_batches
from detailclip_cli.tools.costs import (STEP_STAGES, TrainStep, count_flops, interleaved_runs, matmul_gflops,
                                        round_sig, spread, step_memory_in_subprocess, synchronize, variant_configs)

SECTIONS = ("train", "split", "keep", "flops", "scores", "data", "inference", "bulk", "startup", "memory")
KEEP_RATIOS = (1.0, 0.5, 0.25)
LOADER_WORKERS = (0, 1, 2)
# The stages of a DetailCLIP step: the objective's marked ones, then the step's own.
STAGES = stages.STAGES + STEP_STAGES
CPU_BATCH_SIZE = 8  # default batch on CPU; on CUDA the preset's own batch
LOADER_MIN_IMAGES = 64  # images per timed data-loader window
LOADER_SECONDS = 2.0  # seconds per figure of the one-core transform measurement
BULK_IMAGES = 128  # images of the bulk zero-shot figure (the figure: --bulk-images 5000)
BULK_BATCH = 64  # zero-shot's --batch-size default
BULK_LABELS = ("striped", "dotted", "checkered", "plain")  # the demo's classes
# The model-using commands timed on one image: name -> arguments after `detailclip` ({image}, {out}).
STARTUP_COMMANDS = {
    "zero_shot": ["zero-shot", "{image}", "--labels", "dog,cat"],
    "attn_map": ["attn-map", "{image}", "--out", "{out}/attn"],
    "reconstruct": ["reconstruct", "{image}", "--out", "{out}/reconstruct"],
    "embed": ["embed", "{image}"],
}
STARTUP_EXTRA_S = 0.8  # the bound: a one-image command at most `import torch` + 0.8 s

# The targets: name -> (where in the record, comparison, bound, what it means).
TARGETS = {
    "machinery_overhead": (("flops", "machinery_overhead"), "<=", 1.1,
                           "DetailCLIP/CLIP time ratio over their FLOP ratio"),
    "keep_0.5_speedup": (("keep", "speedup_0.5"), ">=", 1.9,
                         "student encoder fwd+bwd at keep 0.5 vs 1.0"),
    "scores_overhead": (("scores", "overhead"), "<=", 0.05,
                        "teacher forward_with_scores over plain forward, minus 1"),
    "mfu": (("flops", "detailclip_mfu"), ">=", 0.5, "DetailCLIP step FLOP/s over measured matmul FLOP/s"),
    "zero_shot_vs_open_clip": (("inference", "ours_vs_open_clip"), ">=", 0.95,
                               "encode_image images/s, ours over open_clip"),
    "bulk_zero_shot_vs_open_clip": (("bulk", "ours_vs_open_clip"), ">=", 1.0,
                                    "zero-shot images/s over files, ours over open_clip's loop"),
    "help_seconds": (("startup", "help_s"), "<", 0.5, "wall time of `detailclip --help`"),
    **{f"startup_{name}_extra_s": (("startup", f"{name}_extra_s"), "<=", STARTUP_EXTRA_S,
                                   f"one-image `{name.replace('_', '-')}` minus `import torch`, seconds")
       for name in ("zero_shot", "attn_map", "reconstruct")},
}


@dataclass(kw_only=True)
class BenchConfig:
    """What to measure and how often.

    Attributes:
        preset: model preset (``tiny``, ``small``, ``base``).
        batch_size: images per training step; None = ``CPU_BATCH_SIZE`` on CPU, the preset's
            batch on CUDA. Inference uses the same batch.
        device: ``auto``, ``cpu`` or ``cuda[:N]``.
        repeats: timed runs per figure (the median and the spread are reported).
        warmup: untimed runs before them.
        sections: which of :data:`SECTIONS` to run.
        workers: data-loader worker counts to try.
        data: data spec of the data-pipeline section.
        matmul_size: side of the square matmuls that measure peak FLOP/s; None = 2048 on CPU,
            8192 on CUDA.
        seed: seed of weights and inputs.
        bulk_images: images of the ``bulk`` section.
    """

    preset: str = "small"
    batch_size: int | None = None
    device: str = "auto"
    repeats: int = 5
    warmup: int = 1
    sections: tuple[str, ...] = SECTIONS
    workers: tuple[int, ...] = LOADER_WORKERS
    data: str = "demo"
    matmul_size: int | None = None
    seed: int = 0
    bulk_images: int = BULK_IMAGES

    def validate(self) -> None:
        unknown = [s for s in self.sections if s not in SECTIONS]
        if unknown:
            raise ConfigError(f"unknown bench section(s) {', '.join(unknown)} (choose from {', '.join(SECTIONS)})")
        if not self.sections:
            raise ConfigError("no bench sections selected")
        if self.batch_size is not None and self.batch_size < 1:
            raise ConfigError(f"batch size must be at least 1, got {self.batch_size}")
        if self.repeats < 1 or self.warmup < 0:
            raise ConfigError(f"repeats must be >= 1 and warmup >= 0, got {self.repeats} and {self.warmup}")
        if self.bulk_images < 1:
            raise ConfigError(f"bulk images must be at least 1, got {self.bulk_images}")
        if any(w < 0 for w in self.workers):
            raise ConfigError(f"worker counts must be >= 0, got {self.workers}")


# -- timing --------------------------------------------------------------------------------------


class Laps:
    """A stopwatch that adds the time since the previous lap to a named stage."""

    def __init__(self, device: torch.device):
        self.device = device
        self.seconds: dict[str, float] = defaultdict(float)
        self._last = 0.0

    def start(self) -> None:
        synchronize(self.device)
        self._last = time.perf_counter()

    def lap(self, stage: str) -> None:
        synchronize(self.device)
        now = time.perf_counter()
        self.seconds[stage] += now - self._last
        self._last = now


def staged_step(step: TrainStep) -> tuple[dict[str, float], float]:
    """One step of ``step`` (the objective's real forward and backward), timed stage by stage.

    Returns:
        seconds per stage (the keys of :data:`STAGES` that ran, in the order they first ended),
        and the step's total loss.
    """
    laps = Laps(step.device)
    laps.start()
    loss = step(laps.lap)
    return dict(laps.seconds), loss


def encoder_pass(visual, images: torch.Tensor, keep_ratio: float, *, block_size: int,
                 generator: torch.Generator) -> int:
    """Student encoder forward + backward over the ``keep_ratio`` of patches (random scores).

    Args:
        visual: the student's ``VisionTransformer``.
        images: (VB, 3, H, W).
        keep_ratio: fraction of patch tokens kept.
        block_size: removal block side (1 when nothing is removed).
        generator: source of the random scores.

    Returns:
        K, the number of patch tokens encoded.
    """
    visual.zero_grad(set_to_none=True)
    patches = visual.embed_patches(images)  # (VB, L, D)
    scores = random_scores(patches.shape[0], patches.shape[1], generator=generator, device=patches.device)
    removal = remove_tokens(patches, scores, keep_ratio, grid=visual.grid_size,
                            block_size=block_size if keep_ratio < 1.0 else 1)
    latent, _ = visual.forward_tokens(removal.kept)  # (VB, 1 + K, D)
    latent.float().square().mean().backward()
    return removal.kept.shape[1]


# -- the sections --------------------------------------------------------------------------------


def _ratio(a: float | None, b: float | None) -> float | None:
    return round_sig(a / b) if a is not None and b else None


def _per_round(fn: Callable[..., float], *samples: Sequence[float]) -> list[float]:
    """``fn`` of the i-th sample of each list, for every round i (a ratio taken round by round)."""
    return [fn(*values) for values in zip(*samples)]


def _median(samples: Sequence[float]) -> float:
    return statistics.median(samples)


class _Bench:
    """Runs the sections, sharing the built steps and the step times between them."""

    def __init__(self, cfg: BenchConfig, device: torch.device, batch_size: int,
                 on_stage: Callable[[str], None]):
        self.cfg, self.device, self.batch_size, self.on_stage = cfg, device, batch_size, on_stage
        self._steps: dict[str, TrainStep] = {}
        self._rounds: dict[str, list[float]] | None = None
        self._flops: dict[str, int] = {}
        self._workdir = tempfile.TemporaryDirectory(prefix="detailclip-bench-")
        self._images: list[Path] = []

    def close(self) -> None:
        self._workdir.cleanup()

    def rounds(self, fns: dict[str, Callable[[], Any]]) -> dict[str, list[float]]:
        return interleaved_runs(fns, repeats=self.cfg.repeats, warmup=self.cfg.warmup, device=self.device)

    def step(self, variant: str) -> TrainStep:
        if variant not in self._steps:
            model_cfg, train_cfg = variant_configs(self.cfg.preset, variant)
            train_cfg = dataclasses.replace(train_cfg, batch_size=self.batch_size)
            self._steps[variant] = TrainStep(model_cfg, train_cfg, batch_size=self.batch_size,
                                             device=self.device, seed=self.cfg.seed)
        return self._steps[variant]

    @property
    def compute_dtype(self) -> torch.dtype:
        """What the step's matmuls run in: bf16 under the loop's autocast on CUDA, else float32."""
        return torch.bfloat16 if self.device.type == "cuda" else torch.float32

    @property
    def matmul_size(self) -> int:
        return self.cfg.matmul_size or (8192 if self.device.type == "cuda" else 2048)

    def step_rounds(self) -> dict[str, list[float]]:
        """Seconds of a CLIP step, a DetailCLIP step and a square matmul (the peak rate), per round.

        Timed together, round by round, so the DetailCLIP/CLIP ratio (machinery overhead) and
        the achieved/peak rate (MFU) compare times that saw the same load.
        """
        if self._rounds is None:
            self.on_stage("train steps (CLIP, DetailCLIP) and the matmul rate, in rounds")
            size, dtype = self.matmul_size, self.compute_dtype
            g = torch.Generator().manual_seed(0)
            a = torch.randn(size, size, generator=g).to(self.device, dtype)
            b = torch.randn(size, size, generator=g).to(self.device, dtype)
            out = torch.empty(size, size, device=self.device, dtype=dtype)
            self._rounds = self.rounds({"clip": self.step("clip"), "detailclip": self.step("detailclip"),
                                        "matmul": lambda: torch.mm(a, b, out=out)})
            del a, b, out
        return self._rounds

    def step_seconds(self, variant: str) -> float:
        return _median(self.step_rounds()[variant])

    # Each section returns its part of the record.

    def train(self) -> dict:
        r = self.step_rounds()
        b = self.batch_size
        ratio = _per_round(lambda d, c: d / c, r["detailclip"], r["clip"])
        clip_s, detail_s = _median(r["clip"]), _median(r["detailclip"])
        return {"clip_step_s": round_sig(clip_s), "detailclip_step_s": round_sig(detail_s),
                "clip_images_per_s": round_sig(b / clip_s), "detailclip_images_per_s": round_sig(b / detail_s),
                "detailclip_vs_clip": round_sig(_median(ratio)),
                "spread": {"clip_step_s": spread(r["clip"]), "detailclip_step_s": spread(r["detailclip"]),
                           "detailclip_vs_clip": spread(ratio)}}

    def split(self) -> dict:
        step_s = self.step_seconds("detailclip")
        self.on_stage("split of a DetailCLIP step")
        step = self.step("detailclip")
        for _ in range(self.cfg.warmup):
            staged_step(step)
        runs, walls = [], []
        for _ in range(self.cfg.repeats):
            t0 = time.perf_counter()
            runs.append(staged_step(step)[0])
            walls.append(time.perf_counter() - t0)
        names = [name for name in STAGES if any(name in run for run in runs)]
        samples = {name: [run.get(name, 0.0) for run in runs] for name in names}
        seconds = {name: _median(samples[name]) for name in names}
        total = sum(seconds.values())
        # The part of each staged step no stage covers (the stopwatch's own cost, Python between stages).
        untimed = _per_round(lambda run, wall: 1.0 - sum(run.values()) / wall, runs, walls)
        return {"stages_s": {k: round_sig(v) for k, v in seconds.items()},
                "fraction": {k: round_sig(v / total) for k, v in seconds.items()},
                "sum_s": round_sig(total), "step_s": round_sig(step_s), "sum_vs_step": _ratio(total, step_s),
                "untimed_fraction": round_sig(_median(untimed)),
                "spread": {**{name: spread(samples[name]) for name in names}, "staged_step_s": spread(walls),
                           "untimed_fraction": spread(untimed)}}

    def keep(self) -> dict:
        step = self.step("detailclip")
        visual, images = step.model.visual, step.images
        block = step.cfg.block_size
        self.on_stage(f"student encoder at keep {', '.join(map(str, KEEP_RATIOS))}, in rounds")
        g = torch.Generator().manual_seed(self.cfg.seed)
        with step.autocast():
            r = self.rounds({str(keep): lambda k=keep: encoder_pass(visual, images, k, block_size=block, generator=g)
                             for keep in KEEP_RATIOS})
            flops = {keep: count_flops(lambda k=keep: encoder_pass(visual, images, k, block_size=block, generator=g))
                     for keep in KEEP_RATIOS}
        visual.zero_grad(set_to_none=True)
        full = r[str(KEEP_RATIOS[0])]
        rows, spreads = [], {}
        for keep in KEEP_RATIOS:
            speedup = _per_round(lambda f, k: f / k, full, r[str(keep)])
            tokens = num_kept(visual.grid_size[0] * visual.grid_size[1], keep, block if keep < 1.0 else 1)
            rows.append({"keep_ratio": keep, "tokens": tokens, "seconds": round_sig(_median(r[str(keep)])),
                         "gflops": round_sig(flops[keep] / 1e9), "speedup": round_sig(_median(speedup))})
            spreads[f"seconds_{keep}"] = spread(r[str(keep)])
            spreads[f"speedup_{keep}"] = spread(speedup)
        return {"rows": rows, **{f"speedup_{r['keep_ratio']}": r["speedup"] for r in rows[1:]}, "spread": spreads}

    def step_flops(self, variant: str) -> int:
        if variant not in self._flops:
            self._flops[variant] = count_flops(self.step(variant).forward_backward)
            self.step(variant).optimizer.zero_grad(set_to_none=True)
        return self._flops[variant]

    def flops(self) -> dict:
        self.on_stage("FLOPs and the matmul rate")
        flops = {v: self.step_flops(v) for v in ("clip", "detailclip")}
        r = self.step_rounds()
        size, compute = self.matmul_size, str(self.compute_dtype).removeprefix("torch.")
        peak = [2 * size ** 3 / s / 1e9 for s in r["matmul"]]  # GFLOP/s per round
        rates = {compute: _median(peak)}
        if self.device.type == "cuda":  # the float32 rate too, for reference
            rates["float32"] = matmul_gflops(self.device, size, torch.float32, repeats=self.cfg.repeats,
                                             warmup=self.cfg.warmup)
        achieved = {v: [flops[v] / s / 1e9 for s in r[v]] for v in flops}
        mfu = {v: _per_round(lambda a, p: a / p, achieved[v], peak) for v in flops}
        flop_ratio = flops["detailclip"] / flops["clip"]
        overhead = _per_round(lambda d, c: d / c / flop_ratio, r["detailclip"], r["clip"])
        return {
            "clip_gflops": round_sig(flops["clip"] / 1e9), "detailclip_gflops": round_sig(flops["detailclip"] / 1e9),
            "detailclip_vs_clip": round_sig(flop_ratio),
            "matmul_size": size, "compute_dtype": compute,
            "matmul_gflops_per_s": {k: round_sig(v) for k, v in rates.items()},
            "clip_achieved_gflops_per_s": round_sig(_median(achieved["clip"])),
            "detailclip_achieved_gflops_per_s": round_sig(_median(achieved["detailclip"])),
            "clip_mfu": round_sig(_median(mfu["clip"])), "detailclip_mfu": round_sig(_median(mfu["detailclip"])),
            "machinery_overhead": round_sig(_median(overhead)),
            "spread": {"matmul_gflops_per_s": spread(peak), "clip_mfu": spread(mfu["clip"]),
                       "detailclip_mfu": spread(mfu["detailclip"]), "machinery_overhead": spread(overhead)},
        }

    def scores(self) -> dict:
        self.on_stage("teacher attention scores")
        step = self.step("detailclip")
        teacher = step.objective.teacher.visual
        images, layer = step.images, step.cfg.score_layer
        with torch.no_grad(), step.autocast():
            r = self.rounds({"plain": lambda: teacher(images),
                             "scored": lambda: teacher.forward_with_scores(images, layer)})
        ratio = _per_round(lambda s, p: s / p, r["scored"], r["plain"])
        median = _median(ratio)
        return {"forward_s": round_sig(_median(r["plain"])), "forward_with_scores_s": round_sig(_median(r["scored"])),
                "ratio": round_sig(median), "overhead": round_sig(median - 1.0),
                "spread": {"forward_s": spread(r["plain"]), "forward_with_scores_s": spread(r["scored"]),
                           "ratio": spread(ratio)}}

    def data(self) -> dict:
        step = self.step("detailclip")
        v = step.model.cfg.vision
        samples = open_source(self.cfg.data, split="train", streaming=False)
        dataset = TwoViewDataset(samples, image_size=v.image_size, mean=v.mean, std=v.std,
                                 aug=train_augment(v.image_size, samples.chiral), tokenize=step.model.tokenize,
                                 seed=self.cfg.seed)
        rows, spreads = [], {}
        for workers in self.cfg.workers:
            self.on_stage(f"data loader, {workers} workers")
            rates = loader_images_per_s(dataset, dataclasses.replace(step.cfg, workers=workers),
                                        repeats=self.cfg.repeats)
            rows.append({"workers": workers, "images_per_s": round_sig(_median(rates))})
            spreads[f"workers_{workers}"] = spread(rates)
        consumed = self.batch_size / self.step_seconds("detailclip")
        for row in rows:
            row["vs_step"] = _ratio(row["images_per_s"], consumed)
        self.on_stage("images one core prepares")
        per_core = loader_per_core(v.image_size)
        return {"rows": rows, "step_images_per_s": round_sig(consumed), "image_size": v.image_size,
                "loader_per_core": per_core,
                # Feeding a step that eats `consumed` images/s takes this many cores at that rate each.
                "cores_per_device": _ratio(consumed, per_core["ours_two_views"]),
                "spread": spreads}

    def inference(self) -> dict:
        self.on_stage("zero-shot image encoding, ours vs open_clip")
        model_cfg, _ = load_preset(self.cfg.preset)
        ours, theirs = open_clip_twins(model_cfg, device=self.device)
        g = torch.Generator().manual_seed(self.cfg.seed)
        v = model_cfg.vision
        images = torch.randn(self.batch_size, 3, v.image_size, v.image_size, generator=g).to(self.device)
        with torch.no_grad():
            diff = (ours.encode_image(images) - theirs.encode_image(images, normalize=True)).abs().max().item()
            r = self.rounds({"ours": lambda: ours.encode_image(images),
                             "theirs": lambda: theirs.encode_image(images, normalize=True)})
        ratio = _per_round(lambda o, t: t / o, r["ours"], r["theirs"])
        return {"ours_images_per_s": round_sig(self.batch_size / _median(r["ours"])),
                "open_clip_images_per_s": round_sig(self.batch_size / _median(r["theirs"])),
                "ours_vs_open_clip": round_sig(_median(ratio)), "max_abs_diff": round_sig(diff, 2),
                "spread": {"ours_s": spread(r["ours"]), "open_clip_s": spread(r["theirs"]),
                           "ours_vs_open_clip": spread(ratio)}}

    def images(self, count: int) -> list[Path]:
        """``count`` demo-sized PNG images (demo validation images, generated once, masks left out)."""
        if len(self._images) < count:
            self.on_stage(f"generating {count} demo images")
            self._images = demo_images(Path(self._workdir.name) / "images", count)
        return self._images[:count]

    def bulk(self) -> dict:
        n = self.cfg.bulk_images
        paths = self.images(n)
        self.on_stage(f"bulk zero-shot over {n} images, ours vs open_clip")
        ours, theirs = bulk_zero_shot_runs(paths, Path(self._workdir.name) / "open_clip", device=self.device,
                                           batch_size=BULK_BATCH, labels=BULK_LABELS)
        predictions = {}

        def keep(name: str, fn: Callable[[], list[int]]) -> Callable[[], None]:
            return lambda: predictions.__setitem__(name, fn())

        r = self.rounds({"ours": keep("ours", ours), "theirs": keep("theirs", theirs)})
        ratio = _per_round(lambda o, t: t / o, r["ours"], r["theirs"])
        agree = sum(a == b for a, b in zip(predictions["ours"], predictions["theirs"])) / n
        return {"images": n, "batch_size": BULK_BATCH, "workers": default_workers(n, device=self.device),
                "ours_images_per_s": round_sig(n / _median(r["ours"])),
                "open_clip_images_per_s": round_sig(n / _median(r["theirs"])),
                "ours_vs_open_clip": round_sig(_median(ratio)), "top1_agreement": round_sig(agree),
                "spread": {"ours_s": spread(r["ours"]), "open_clip_s": spread(r["theirs"]),
                           "ours_vs_open_clip": spread(ratio)}}

    def startup(self) -> dict:
        self.on_stage("start-up time of each command")
        image = self.images(1)[0]
        return startup_seconds(image, Path(self._workdir.name) / "startup", repeats=self.cfg.repeats,
                               warmup=self.cfg.warmup)

    def memory(self) -> dict:
        out = {}
        for variant in ("clip", "detailclip"):
            self.on_stage(f"peak memory of a train step ({variant})")
            out[variant] = step_memory_in_subprocess(self.cfg.preset, self.batch_size, variant, self.device)
        out["detailclip_vs_clip"] = _ratio(out["detailclip"]["step_peak_mib"], out["clip"]["step_peak_mib"])
        return out


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
    from detailclip_cli.tools.loader import measure

    threads = torch.get_num_threads()
    try:
        return measure(image_size=image_size, seconds=seconds)
    finally:
        torch.set_num_threads(threads)


def demo_images(folder: Path, count: int) -> list[Path]:
    """Write the first ``count`` demo validation images into ``folder``; their PNG paths, in order."""
    from detailclip_cli.core.data.demo import generate_demo

    folder.mkdir(parents=True, exist_ok=True)
    generate_demo(folder, sizes={"val": count})
    images = [p for p in folder.glob("val/*/*.png") if not p.name.endswith(".mask.png")]
    return sorted(images, key=lambda p: p.stem)  # the demo's ids: generation order


def bulk_zero_shot_runs(paths: Sequence[Path], export_dir: Path, *, device: torch.device, batch_size: int,
                        labels: Sequence[str]) -> tuple[Callable[[], list[int]], Callable[[], list[int]]]:
    """Two ways to classify ``paths`` zero-shot with the shipped model, each returning top-1 indices.

    - ours: what ``detailclip zero-shot FILES`` does after start-up: the images decoded by
      ``DataLoader`` workers (the command's default count), :func:`classify` per batch;
    - theirs: the shipped model exported to open_clip (``export --to open_clip``), loaded with
      ``open_clip.create_model_and_transforms``, and the loop open_clip's README shows: PIL
      open, its eval transform, ``encode_image``, normalise, scaled cosine to the class
      embeddings, softmax, in the main process.

    Both build their classifier from ``a photo of a {label}.`` before the timed runs.
    """
    import open_clip
    from PIL import Image

    from detailclip_cli.core.use.zeroshot import build_classifier, classify

    prompts = [f"a photo of a {label}." for label in labels]
    net = resolve_model(None, device=device).eval()
    classifier = build_classifier(net, labels, [lambda label: f"a photo of a {label}."])
    v = net.cfg.vision
    workers = default_workers(len(paths), device=device)

    def ours() -> list[int]:
        top = []
        for batch in iter_image_batches(list(paths), image_size=v.image_size, mean=v.mean, std=v.std,
                                        batch_size=batch_size, workers=workers):
            top += classify(net, batch.images.to(device), classifier).argmax(dim=1).tolist()
        return top

    export_model(None, to="open_clip", out=export_dir)
    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{export_dir}", device=device)
    model.eval()
    tokenizer = open_clip.get_tokenizer(f"local-dir:{export_dir}")
    with torch.no_grad():
        text = model.encode_text(tokenizer(prompts).to(device))
        text = text / text.norm(dim=-1, keepdim=True)  # (C, E)

    @torch.no_grad()
    def theirs() -> list[int]:
        top = []
        for start in range(0, len(paths), batch_size):
            images = torch.stack([preprocess(Image.open(p)) for p in paths[start:start + batch_size]]).to(device)
            emb = model.encode_image(images)
            emb = emb / emb.norm(dim=-1, keepdim=True)
            probs = (model.logit_scale.exp() * emb @ text.T).softmax(dim=-1)  # (B, C)
            top += probs.argmax(dim=1).tolist()
        return top

    return ours, theirs


def open_clip_twins(model_cfg: ModelConfig, *, device: torch.device):
    """An open_clip ``CLIP`` with the preset's dimensions (random weights) and our copy of it.

    Returns:
        (ours, theirs): a :class:`DetailCLIP` converted from the open_clip model (same layout
        and weights, so the two encode identically) and the open_clip model, both in eval mode.
    """
    import open_clip


    v, t = model_cfg.vision, model_cfg.text
    theirs = open_clip.CLIP(
        embed_dim=model_cfg.embed_dim,
        vision_cfg={"image_size": v.image_size, "patch_size": v.patch_size, "width": v.width, "layers": v.depth,
                    "head_width": v.width // v.heads, "mlp_ratio": v.mlp_ratio, "no_ln_pre": not v.pre_norm},
        text_cfg={"context_length": t.context_length, "vocab_size": t.vocab_size, "width": t.width,
                  "heads": t.heads, "layers": t.layers},
    )
    ours = from_open_clip(theirs, name=f"open_clip twin of the {v.depth}x{v.width} preset")
    return ours.to(device).eval(), theirs.to(device).eval()


def startup_seconds(image: Path, out: Path, *, repeats: int, warmup: int = 1) -> dict:
    """Wall time of fresh processes: ``python -c "import torch"``, ``detailclip --help``, and each of
    :data:`STARTUP_COMMANDS` on ``image`` with the shipped model (outputs under ``out``).

    The commands run in rounds, one of each per round, so each command's ratio to (and its
    seconds beyond) ``import torch`` compares runs seconds apart.

    Returns:
        ``<name>_s`` (median seconds) for ``import_torch``, ``python``, ``help`` and each command;
        ``help_vs_import_torch``; per command ``<name>_vs_import_torch`` and ``<name>_extra_s``
        (medians of the per-round ratio and difference); ``spread`` of all of them.
    """
    exe = Path(sys.executable)
    script = exe.parent / "detailclip"
    cli = [str(script)] if script.exists() else [str(exe), "-m", "detailclip_cli"]
    commands = {"import_torch": [str(exe), "-c", "import torch"], "python": [str(exe), "-c", "pass"],
                "help": [*cli, "--help"]}
    for name, args in STARTUP_COMMANDS.items():
        commands[name] = [*cli, *(a.format(image=image, out=out) for a in args)]

    def run(cmd: list[str]) -> None:
        result = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if result.returncode != 0:
            last = (result.stderr.strip().splitlines() or ["no output"])[-1]
            raise RuntimeError(f"{' '.join(cmd[-4:])} failed while timing start-up: {last}")

    r = interleaved_runs({name: (lambda c=cmd: run(c)) for name, cmd in commands.items()},
                         repeats=repeats, warmup=warmup, device=torch.device("cpu"))
    torch_s = r["import_torch"]
    out_record: dict[str, Any] = {f"{name}_s": round_sig(_median(times)) for name, times in r.items()}
    spreads = {f"{name}_s": spread(times) for name, times in r.items()}
    for name in ("help", *STARTUP_COMMANDS):
        ratio = _per_round(lambda c, t: c / t, r[name], torch_s)
        out_record[f"{name}_vs_import_torch"] = round_sig(_median(ratio))
        spreads[f"{name}_vs_import_torch"] = spread(ratio)
        if name != "help":
            extra = _per_round(lambda c, t: c - t, r[name], torch_s)
            out_record[f"{name}_extra_s"] = round_sig(_median(extra))
            spreads[f"{name}_extra_s"] = spread(extra)
    out_record["spread"] = spreads
    return out_record


# -- the whole bench -----------------------------------------------------------------------------


def check_targets(record: dict) -> dict[str, dict]:
    """Each of :data:`TARGETS` whose figure the record has: value (the median), bound, whether the
    median meets it, and the figure's ``range`` (min, max) over the repeats where it has one."""
    out = {}
    for name, ((section, key), op, bound, meaning) in TARGETS.items():
        value = record.get(section, {}).get(key)
        if value is None:
            continue
        met = {"<=": value <= bound, ">=": value >= bound, "<": value < bound}[op]
        out[name] = {"value": value, "target": f"{op} {bound:g}", "met": bool(met), "meaning": meaning}
        figure_spread = record[section].get("spread", {}).get(key)
        if figure_spread is not None:  # the value is this median; the range shows how far one run strays
            out[name]["range"] = [figure_spread["min"], figure_spread["max"]]
    return out


def run_bench(cfg: BenchConfig, *, on_stage: Callable[[str], None] | None = None) -> dict:
    """Run the selected sections and return one record.

    Args:
        cfg: what to measure.
        on_stage: told a short description before each measurement (for progress display).

    Returns:
        ``{"preset", "batch_size", "device", ..., <section>: {...} for each section,
        "targets": {...}}``; times in seconds, rates in images/s or GFLOP/s, ratios plain.

    Raises:
        ConfigError: unknown preset, section or device.
    """
    cfg.validate()
    load_preset(cfg.preset)  # a bad preset fails before anything runs
    device = resolve_device(cfg.device)
    if cfg.batch_size is not None:
        batch_size = cfg.batch_size
    elif device.type == "cuda":
        batch_size = load_preset(cfg.preset)[1].batch_size
    else:
        batch_size = CPU_BATCH_SIZE
    bench = _Bench(cfg, device, batch_size, on_stage or (lambda _: None))
    record: dict[str, Any] = {
        "preset": cfg.preset, "batch_size": batch_size, "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name(),
        "threads": torch.get_num_threads(), "torch": torch.__version__,
        "repeats": cfg.repeats, "warmup": cfg.warmup,
    }
    if "bulk" in cfg.sections:
        record["bulk_images"] = cfg.bulk_images
    t0, cpu0, load0 = time.perf_counter(), time.process_time(), _load_average()
    try:
        for section in SECTIONS:  # a fixed order: the step times are measured first
            if section in cfg.sections:
                record[section] = getattr(bench, section)()
    finally:
        bench.close()
    record["targets"] = check_targets(record)
    wall = time.perf_counter() - t0
    record["seconds"] = round(wall, 1)
    # Other busy processes skew every figure; the load and this process's share of the CPUs show it.
    record["load_average"] = [load0, _load_average()]
    record["cpu_per_wall"] = round_sig((time.process_time() - cpu0) / wall, 3)
    return record


def _load_average() -> float | None:
    """The 1-minute load average (None where the OS has none)."""
    import os

    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def parse_sections(values: Sequence[str] | None) -> tuple[str, ...]:
    """``["train,keep", "flops"]`` -> ``("train", "keep", "flops")``; None or empty = all."""
    names = [s.strip() for v in values or () for s in v.split(",") if s.strip()]
    return tuple(dict.fromkeys(names)) or SECTIONS
