"""Measure what training, the data pipeline, inference and start-up cost, in one record.

Every time is a median over ``repeats`` timed runs after ``warmup`` untimed ones, measured in one
process on one preset, batch and device, so the ratios compare like with like. The result is a
plain dict (one JSON record) with the comparisons as ratios and the issue's targets checked;
drawing it is the CLI's job.

Sections (each can be switched on alone):

- ``train``: a full training step (forward, loss check, backward, AdamW, EMA) of plain CLIP
  (removal none, no decoder, no head) and of DetailCLIP (the preset's defaults).
- ``split``: where a DetailCLIP step's time goes. The step runs as in ``train`` (the
  objective's real forward and backward); the stages the objective marks in its forward
  (:func:`~detailclip_cli.core.method.stages.stage`: teacher, student encoder, text tower,
  decoder, heads and losses) and the step's own (loss check, backward, AdamW, EMA) each end
  with the device synchronised and a stopwatch read; their sum is compared with the full step.
- ``keep``: the student encoder's forward + backward at keep ratios 1.0, 0.5 and 0.25.
- ``flops``: FLOPs of a step's forward + backward (``FlopCounterMode``), the achieved rate as a
  fraction of this machine's measured dense matmul rate (MFU), and the machinery overhead
  ``(time ratio) / (FLOP ratio)`` of DetailCLIP over CLIP.
- ``scores``: the teacher's forward with [CLS] attention scores vs its plain forward.
- ``data``: images/s the training ``DataLoader`` delivers (two augmented views + tokens) for
  0, 1, 2 workers vs images/s a DetailCLIP step consumes.
- ``inference``: zero-shot image encoding, ours vs the same architecture run by open_clip.
- ``startup``: ``detailclip --help`` vs ``python -c "import torch"`` (fresh processes).
- ``memory``: peak memory a training step adds to a built model (a fresh process each).

"Images" are training samples: each has two views, so a step over B images encodes 2B views.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
import subprocess
import sys
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
from detailclip_cli.core.store.openclip import from_open_clip
from detailclip_cli.core.training.loop import iterate_batches
from detailclip_cli.core.training.trainset import train_augment
from detailclip_cli.tools.costs import (STEP_STAGES, TrainStep, count_flops, matmul_gflops, median_seconds,
                                        round_sig, step_memory_in_subprocess, synchronize, variant_configs)

SECTIONS = ("train", "split", "keep", "flops", "scores", "data", "inference", "startup", "memory")
KEEP_RATIOS = (1.0, 0.5, 0.25)
LOADER_WORKERS = (0, 1, 2)
# The stages of a DetailCLIP step: the objective's marked ones, then the step's own.
STAGES = stages.STAGES + STEP_STAGES
CPU_BATCH_SIZE = 8  # default batch on CPU; on CUDA the preset's own batch
LOADER_MIN_IMAGES = 64  # images per timed data-loader window

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
    "help_seconds": (("startup", "help_s"), "<", 0.5, "wall time of `detailclip --help`"),
}


@dataclass(kw_only=True)
class BenchConfig:
    """What to measure and how often.

    Attributes:
        preset: model preset (``tiny``, ``small``, ``base``).
        batch_size: images per training step; None = ``CPU_BATCH_SIZE`` on CPU, the preset's
            batch on CUDA. Inference uses the same batch.
        device: ``auto``, ``cpu`` or ``cuda[:N]``.
        repeats: timed runs per figure (the median is reported).
        warmup: untimed runs before them.
        sections: which of :data:`SECTIONS` to run.
        workers: data-loader worker counts to try.
        data: data spec of the data-pipeline section.
        matmul_size: side of the square matmuls that measure peak FLOP/s; None = 2048 on CPU,
            8192 on CUDA.
        seed: seed of weights and inputs.
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


class _Bench:
    """Runs the sections, sharing the built steps and the step times between them."""

    def __init__(self, cfg: BenchConfig, device: torch.device, batch_size: int,
                 on_stage: Callable[[str], None]):
        self.cfg, self.device, self.batch_size, self.on_stage = cfg, device, batch_size, on_stage
        self._steps: dict[str, TrainStep] = {}
        self._step_seconds: dict[str, float] = {}

    def time(self, fn: Callable[[], Any]) -> float:
        return median_seconds(fn, repeats=self.cfg.repeats, warmup=self.cfg.warmup, device=self.device)

    def step(self, variant: str) -> TrainStep:
        if variant not in self._steps:
            model_cfg, train_cfg = variant_configs(self.cfg.preset, variant)
            train_cfg = dataclasses.replace(train_cfg, batch_size=self.batch_size)
            self._steps[variant] = TrainStep(model_cfg, train_cfg, batch_size=self.batch_size,
                                             device=self.device, seed=self.cfg.seed)
        return self._steps[variant]

    def step_seconds(self, variant: str) -> float:
        if variant not in self._step_seconds:
            self.on_stage(f"train step ({variant})")
            self._step_seconds[variant] = self.time(self.step(variant))
        return self._step_seconds[variant]

    # Each section returns its part of the record.

    def train(self) -> dict:
        clip_s, detail_s = self.step_seconds("clip"), self.step_seconds("detailclip")
        b = self.batch_size
        return {"clip_step_s": round_sig(clip_s), "detailclip_step_s": round_sig(detail_s),
                "clip_images_per_s": round_sig(b / clip_s), "detailclip_images_per_s": round_sig(b / detail_s),
                "detailclip_vs_clip": _ratio(detail_s, clip_s)}

    def split(self) -> dict:
        step_s = self.step_seconds("detailclip")
        self.on_stage("split of a DetailCLIP step")
        step = self.step("detailclip")
        for _ in range(self.cfg.warmup):
            staged_step(step)
        runs = [staged_step(step)[0] for _ in range(self.cfg.repeats)]
        seconds = {name: statistics.median(run.get(name, 0.0) for run in runs)
                   for name in STAGES if any(name in run for run in runs)}
        total = sum(seconds.values())
        return {"stages_s": {k: round_sig(v) for k, v in seconds.items()},
                "fraction": {k: round_sig(v / total) for k, v in seconds.items()},
                "sum_s": round_sig(total), "step_s": round_sig(step_s), "sum_vs_step": _ratio(total, step_s)}

    def keep(self) -> dict:
        step = self.step("detailclip")
        visual, images = step.model.visual, step.images
        block = step.cfg.block_size
        rows = []
        for keep in KEEP_RATIOS:
            self.on_stage(f"student encoder at keep {keep}")
            g = torch.Generator().manual_seed(self.cfg.seed)
            with step.autocast():
                seconds = self.time(lambda: encoder_pass(visual, images, keep, block_size=block, generator=g))
                flops = count_flops(lambda: encoder_pass(visual, images, keep, block_size=block, generator=g))
            tokens = num_kept(visual.grid_size[0] * visual.grid_size[1], keep, block if keep < 1.0 else 1)
            rows.append({"keep_ratio": keep, "tokens": tokens, "seconds": round_sig(seconds),
                         "gflops": round_sig(flops / 1e9)})
        visual.zero_grad(set_to_none=True)
        full = rows[0]["seconds"]
        for row in rows:
            row["speedup"] = _ratio(full, row["seconds"])
        return {"rows": rows, **{f"speedup_{r['keep_ratio']}": r["speedup"] for r in rows[1:]}}

    def flops(self) -> dict:
        self.on_stage("FLOPs and the matmul rate")
        flops = {v: count_flops(self.step(v).forward_backward) for v in ("clip", "detailclip")}
        for v in flops:
            self.step(v).optimizer.zero_grad(set_to_none=True)
        size = self.cfg.matmul_size or (8192 if self.device.type == "cuda" else 2048)
        rates = {"float32": matmul_gflops(self.device, size, torch.float32, repeats=self.cfg.repeats,
                                          warmup=self.cfg.warmup)}
        compute = "float32"
        if self.device.type == "cuda":  # the loop trains under bf16 autocast there
            compute = "bfloat16"
            rates[compute] = matmul_gflops(self.device, size, torch.bfloat16, repeats=self.cfg.repeats,
                                           warmup=self.cfg.warmup)
        seconds = {v: self.step_seconds(v) for v in ("clip", "detailclip")}
        achieved = {v: flops[v] / seconds[v] / 1e9 for v in flops}
        peak = rates[compute]
        return {
            "clip_gflops": round_sig(flops["clip"] / 1e9), "detailclip_gflops": round_sig(flops["detailclip"] / 1e9),
            "detailclip_vs_clip": _ratio(flops["detailclip"], flops["clip"]),
            "matmul_size": size, "compute_dtype": compute,
            "matmul_gflops_per_s": {k: round_sig(v) for k, v in rates.items()},
            "clip_achieved_gflops_per_s": round_sig(achieved["clip"]),
            "detailclip_achieved_gflops_per_s": round_sig(achieved["detailclip"]),
            "clip_mfu": round_sig(achieved["clip"] / peak), "detailclip_mfu": round_sig(achieved["detailclip"] / peak),
            "machinery_overhead": _ratio(seconds["detailclip"] / seconds["clip"], flops["detailclip"] / flops["clip"]),
        }

    def scores(self) -> dict:
        self.on_stage("teacher attention scores")
        step = self.step("detailclip")
        teacher = step.objective.teacher.visual
        images, layer = step.images, step.cfg.score_layer
        with torch.no_grad(), step.autocast():
            plain = self.time(lambda: teacher(images))
            scored = self.time(lambda: teacher.forward_with_scores(images, layer))
        return {"forward_s": round_sig(plain), "forward_with_scores_s": round_sig(scored),
                "ratio": _ratio(scored, plain), "overhead": round_sig(scored / plain - 1.0)}

    def data(self) -> dict:
        step = self.step("detailclip")
        v = step.model.cfg.vision
        samples = open_source(self.cfg.data, split="train", streaming=False)
        dataset = TwoViewDataset(samples, image_size=v.image_size, mean=v.mean, std=v.std,
                                 aug=train_augment(v.image_size, samples.chiral), tokenize=step.model.tokenize,
                                 seed=self.cfg.seed)
        rows = []
        for workers in self.cfg.workers:
            self.on_stage(f"data loader, {workers} workers")
            rate = loader_images_per_s(dataset, dataclasses.replace(step.cfg, workers=workers),
                                       repeats=self.cfg.repeats)
            rows.append({"workers": workers, "images_per_s": round_sig(rate)})
        consumed = self.batch_size / self.step_seconds("detailclip")
        for row in rows:
            row["vs_step"] = _ratio(row["images_per_s"], consumed)
        return {"rows": rows, "step_images_per_s": round_sig(consumed), "image_size": v.image_size}

    def inference(self) -> dict:
        self.on_stage("zero-shot image encoding, ours vs open_clip")
        model_cfg, _ = load_preset(self.cfg.preset)
        ours, theirs = open_clip_twins(model_cfg, device=self.device)
        g = torch.Generator().manual_seed(self.cfg.seed)
        v = model_cfg.vision
        images = torch.randn(self.batch_size, 3, v.image_size, v.image_size, generator=g).to(self.device)
        with torch.no_grad():
            diff = (ours.encode_image(images) - theirs.encode_image(images, normalize=True)).abs().max().item()
            ours_s = self.time(lambda: ours.encode_image(images))
            theirs_s = self.time(lambda: theirs.encode_image(images, normalize=True))
        return {"ours_images_per_s": round_sig(self.batch_size / ours_s),
                "open_clip_images_per_s": round_sig(self.batch_size / theirs_s),
                "ours_vs_open_clip": _ratio(theirs_s, ours_s), "max_abs_diff": round_sig(diff, 2)}

    def startup(self) -> dict:
        self.on_stage("start-up time")
        return startup_seconds(repeats=self.cfg.repeats, warmup=self.cfg.warmup)

    def memory(self) -> dict:
        out = {}
        for variant in ("clip", "detailclip"):
            self.on_stage(f"peak memory of a train step ({variant})")
            out[variant] = step_memory_in_subprocess(self.cfg.preset, self.batch_size, variant, self.device)
        out["detailclip_vs_clip"] = _ratio(out["detailclip"]["step_peak_mib"], out["clip"]["step_peak_mib"])
        return out


def loader_images_per_s(dataset, cfg: TrainConfig, *, repeats: int) -> float:
    """Images/s the training loop's batches arrive at (median over timed windows).

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
    return per_window * cfg.batch_size / statistics.median(times)


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


def startup_seconds(*, repeats: int, warmup: int = 1) -> dict:
    """Median wall time of ``detailclip --help`` vs ``python -c "import torch"`` (fresh processes)."""
    exe = Path(sys.executable)
    script = exe.parent / "detailclip"
    commands = {
        "help_s": [str(script), "--help"] if script.exists() else [str(exe), "-m", "detailclip_cli", "--help"],
        "import_torch_s": [str(exe), "-c", "import torch"],
        "python_s": [str(exe), "-c", "pass"],
    }

    def run(cmd: list[str]) -> None:
        subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)

    out: dict[str, Any] = {key: round_sig(median_seconds(lambda c=cmd: run(c), repeats=repeats, warmup=warmup,
                                                      device=torch.device("cpu")))
                           for key, cmd in commands.items()}
    out["help_vs_import_torch"] = _ratio(out["help_s"], out["import_torch_s"])
    return out


# -- the whole bench -----------------------------------------------------------------------------


def check_targets(record: dict) -> dict[str, dict]:
    """Each of :data:`TARGETS` whose figure the record has: value, bound, and whether it is met."""
    out = {}
    for name, ((section, key), op, bound, meaning) in TARGETS.items():
        value = record.get(section, {}).get(key)
        if value is None:
            continue
        met = {"<=": value <= bound, ">=": value >= bound, "<": value < bound}[op]
        out[name] = {"value": value, "target": f"{op} {bound:g}", "met": bool(met), "meaning": meaning}
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
    t0, cpu0, load0 = time.perf_counter(), time.process_time(), _load_average()
    for section in SECTIONS:  # a fixed order: the step times are measured first
        if section in cfg.sections:
            record[section] = getattr(bench, section)()
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
