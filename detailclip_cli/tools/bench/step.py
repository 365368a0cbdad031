"""The sections that time a training step: ``train``, ``split``, ``keep``, ``flops``, ``scores``
and ``memory``.

Each section is a function of the run's :class:`~detailclip_cli.tools.bench.session.Session`
returning its part of the record. The step is :class:`~detailclip_cli.tools.costs.TrainStep`,
the loop's own step on fixed inputs; ``split`` times the stages its objective marks in its real
forward, never a copy of them.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable

import torch

from detailclip_cli.core.method import stages
from detailclip_cli.core.model.removal import num_kept, random_scores, remove_tokens
from detailclip_cli.tools.bench.figures import median, per_round, rounded_ratio
from detailclip_cli.tools.bench.session import Session
from detailclip_cli.tools.costs import (STEP_STAGES, TrainStep, count_flops, matmul_gflops, round_sig, spread,
                                        step_memory_in_subprocess, synchronize)

KEEP_RATIOS = (1.0, 0.5, 0.25)
# The stages of a DetailCLIP step: the objective's marked ones, then the step's own.
STAGES = stages.STAGES + STEP_STAGES


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


def train(session: Session) -> dict:
    """A CLIP step and a DetailCLIP step, alternating: seconds, images/s and their ratio."""
    r = session.step_rounds()
    b = session.batch_size
    ratio = per_round(lambda d, c: d / c, r["detailclip"], r["clip"])
    clip_s, detail_s = median(r["clip"]), median(r["detailclip"])
    return {"clip_step_s": round_sig(clip_s), "detailclip_step_s": round_sig(detail_s),
            "clip_images_per_s": round_sig(b / clip_s), "detailclip_images_per_s": round_sig(b / detail_s),
            "detailclip_vs_clip": round_sig(median(ratio)),
            "spread": {"clip_step_s": spread(r["clip"]), "detailclip_step_s": spread(r["detailclip"]),
                       "detailclip_vs_clip": spread(ratio)}}


def split(session: Session) -> dict:
    """Where a DetailCLIP step's time goes: seconds per stage, their sum against the step."""
    step_s = session.step_seconds("detailclip")
    session.on_stage("split of a DetailCLIP step")
    step = session.step("detailclip")
    for _ in range(session.cfg.warmup):
        staged_step(step)
    runs, walls = [], []
    for _ in range(session.cfg.repeats):
        t0 = time.perf_counter()
        runs.append(staged_step(step)[0])
        walls.append(time.perf_counter() - t0)
    names = [name for name in STAGES if any(name in run for run in runs)]
    samples = {name: [run.get(name, 0.0) for run in runs] for name in names}
    seconds = {name: median(samples[name]) for name in names}
    total = sum(seconds.values())
    # The part of each staged step no stage covers (the stopwatch's own cost, Python between stages).
    untimed = per_round(lambda run, wall: 1.0 - sum(run.values()) / wall, runs, walls)
    return {"stages_s": {k: round_sig(v) for k, v in seconds.items()},
            "fraction": {k: round_sig(v / total) for k, v in seconds.items()},
            "sum_s": round_sig(total), "step_s": round_sig(step_s), "sum_vs_step": rounded_ratio(total, step_s),
            "untimed_fraction": round_sig(median(untimed)),
            "spread": {**{name: spread(samples[name]) for name in names}, "staged_step_s": spread(walls),
                       "untimed_fraction": spread(untimed)}}


def keep(session: Session) -> dict:
    """The student encoder's forward + backward at each of :data:`KEEP_RATIOS`, in rounds."""
    step = session.step("detailclip")
    visual, images = step.model.visual, step.images
    block = step.cfg.block_size
    session.on_stage(f"student encoder at keep {', '.join(map(str, KEEP_RATIOS))}, in rounds")
    g = torch.Generator().manual_seed(session.cfg.seed)

    def encode(ratio: float) -> Callable[[], int]:
        return lambda: encoder_pass(visual, images, ratio, block_size=block, generator=g)

    with step.autocast():
        r = session.rounds({str(ratio): encode(ratio) for ratio in KEEP_RATIOS})
        counts = {ratio: count_flops(encode(ratio)) for ratio in KEEP_RATIOS}
    visual.zero_grad(set_to_none=True)
    full = r[str(KEEP_RATIOS[0])]
    rows, spreads = [], {}
    for ratio in KEEP_RATIOS:
        speedup = per_round(lambda f, k: f / k, full, r[str(ratio)])
        tokens = num_kept(visual.grid_size[0] * visual.grid_size[1], ratio, block if ratio < 1.0 else 1)
        rows.append({"keep_ratio": ratio, "tokens": tokens, "seconds": round_sig(median(r[str(ratio)])),
                     "gflops": round_sig(counts[ratio] / 1e9), "speedup": round_sig(median(speedup))})
        spreads[f"seconds_{ratio}"] = spread(r[str(ratio)])
        spreads[f"speedup_{ratio}"] = spread(speedup)
    return {"rows": rows, **{f"speedup_{row['keep_ratio']}": row["speedup"] for row in rows[1:]}, "spread": spreads}


def flops(session: Session) -> dict:
    """FLOPs of both steps, the matmul rate timed in their rounds, MFU and the machinery overhead."""
    session.on_stage("FLOPs and the matmul rate")
    counts = {v: session.step_flops(v) for v in ("clip", "detailclip")}
    r = session.step_rounds()
    size, compute = session.matmul_size, str(session.compute_dtype).removeprefix("torch.")
    peak = [2 * size ** 3 / s / 1e9 for s in r["matmul"]]  # GFLOP/s per round
    rates = {compute: median(peak)}
    if session.device.type == "cuda":  # the float32 rate too, for reference
        rates["float32"] = matmul_gflops(session.device, size, torch.float32, repeats=session.cfg.repeats,
                                         warmup=session.cfg.warmup)
    achieved = {v: [counts[v] / s / 1e9 for s in r[v]] for v in counts}
    mfu = {v: per_round(lambda a, p: a / p, achieved[v], peak) for v in counts}
    flop_ratio = counts["detailclip"] / counts["clip"]
    overhead = per_round(lambda d, c: d / c / flop_ratio, r["detailclip"], r["clip"])
    return {
        "clip_gflops": round_sig(counts["clip"] / 1e9), "detailclip_gflops": round_sig(counts["detailclip"] / 1e9),
        "detailclip_vs_clip": round_sig(flop_ratio),
        "matmul_size": size, "compute_dtype": compute,
        "matmul_gflops_per_s": {k: round_sig(v) for k, v in rates.items()},
        "clip_achieved_gflops_per_s": round_sig(median(achieved["clip"])),
        "detailclip_achieved_gflops_per_s": round_sig(median(achieved["detailclip"])),
        "clip_mfu": round_sig(median(mfu["clip"])), "detailclip_mfu": round_sig(median(mfu["detailclip"])),
        "machinery_overhead": round_sig(median(overhead)),
        "spread": {"matmul_gflops_per_s": spread(peak), "clip_mfu": spread(mfu["clip"]),
                   "detailclip_mfu": spread(mfu["detailclip"]), "machinery_overhead": spread(overhead)},
    }


def scores(session: Session) -> dict:
    """The teacher's forward with [CLS] attention scores against its plain forward, in rounds."""
    session.on_stage("teacher attention scores")
    step = session.step("detailclip")
    teacher = step.objective.teacher.visual
    images, layer = step.images, step.cfg.score_layer
    with torch.no_grad(), step.autocast():
        r = session.rounds({"plain": lambda: teacher(images),
                            "scored": lambda: teacher.forward_with_scores(images, layer)})
    ratio = per_round(lambda s, p: s / p, r["scored"], r["plain"])
    median_ratio = median(ratio)
    return {"forward_s": round_sig(median(r["plain"])), "forward_with_scores_s": round_sig(median(r["scored"])),
            "ratio": round_sig(median_ratio), "overhead": round_sig(median_ratio - 1.0),
            "spread": {"forward_s": spread(r["plain"]), "forward_with_scores_s": spread(r["scored"]),
                       "ratio": spread(ratio)}}


def memory(session: Session) -> dict:
    """Peak memory a CLIP and a DetailCLIP step add to a built model, each in a fresh process."""
    out = {}
    for variant in ("clip", "detailclip"):
        session.on_stage(f"peak memory of a train step ({variant})")
        out[variant] = step_memory_in_subprocess(session.cfg.preset, session.batch_size, variant, session.device)
    out["detailclip_vs_clip"] = rounded_ratio(out["detailclip"]["step_peak_mib"], out["clip"]["step_peak_mib"])
    return out
