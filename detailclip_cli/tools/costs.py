"""What one training step costs: the step itself, its FLOPs, its peak memory, the dry-run report.

:class:`TrainStep` runs a step as the training loop does, on fixed random inputs; ``bench``
times it (whole, or stage by stage through the objective's own marked stages) and
``pretrain --dry-run`` (:func:`dry_run`) reports its parameters, FLOPs and memory.
Memory is measured in a fresh process (``*_in_subprocess``), so no earlier allocation hides
the peak.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from detailclip_cli.core.config import ModelConfig, TrainConfig, load_preset
from detailclip_cli.core.method.objective import DetailCLIPObjective
from detailclip_cli.core.method.stages import observe_stages
from detailclip_cli.core.model.detailclip import DetailCLIP
from detailclip_cli.core.training.optim import build_optimizer, lr_at

# The stages of a step after the objective's forward, in order (the loop's, timed by TrainStep).
STEP_STAGES = ("loss_check", "backward", "optimizer", "ema")
MIB = 2 ** 20


# -- timing --------------------------------------------------------------------------------------


def synchronize(device: torch.device) -> None:
    """Wait for queued device work, so wall-clock time covers it (a no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_runs(fn: Callable[[], Any], *, repeats: int, warmup: int, device: torch.device) -> list[float]:
    """Wall times of ``repeats`` runs of ``fn()`` after ``warmup`` untimed ones."""
    return interleaved_runs({"fn": fn}, repeats=repeats, warmup=warmup, device=device)["fn"]


def interleaved_runs(fns: dict[str, Callable[[], Any]], *, repeats: int, warmup: int,
                     device: torch.device) -> dict[str, list[float]]:
    """Wall times of each of ``fns``, run in rounds: every function once per round, back to back.

    On a shared machine the load drifts between seconds; two figures timed in the same round saw
    the same load, so their ratio, taken round by round, is steadier than a ratio of two medians
    measured minutes apart.

    Returns:
        name -> ``repeats`` times in seconds, the i-th of each from round i.
    """
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    synchronize(device)
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            synchronize(device)
            times[name].append(time.perf_counter() - t0)
    return times


def median_seconds(fn: Callable[[], Any], *, repeats: int, warmup: int, device: torch.device) -> float:
    """Median wall time of ``fn()`` over ``repeats`` runs after ``warmup`` untimed ones."""
    return statistics.median(timed_runs(fn, repeats=repeats, warmup=warmup, device=device))


def spread(samples: Sequence[float], digits: int = 4) -> dict[str, float | int]:
    """The median and spread of repeated measurements: ``{"median", "min", "q1", "q3", "max", "n"}``.

    ``q1`` and ``q3`` are the quartiles (inclusive method: with 5 samples, the 2nd and 4th), so
    ``q3 - q1`` is the interquartile range; with one sample every figure is that sample.
    """
    values = sorted(float(x) for x in samples)
    if not values:
        raise ValueError("no samples")
    q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive") if len(values) > 1 else values * 3
    return {"median": round_sig(statistics.median(values), digits), "min": round_sig(values[0], digits),
            "q1": round_sig(q1, digits), "q3": round_sig(q3, digits), "max": round_sig(values[-1], digits),
            "n": len(values)}


def round_sig(x: float | None, digits: int = 4) -> float | None:
    """``digits`` significant digits (JSON for people, not ten decimals of noise)."""
    if x is None or not math.isfinite(x) or x == 0:
        return x
    return round(x, digits - 1 - int(math.floor(math.log10(abs(x)))))


# -- the training step ---------------------------------------------------------------------------


def variant_configs(preset: str, variant: str) -> tuple[ModelConfig, TrainConfig]:
    """The preset as DetailCLIP (``detailclip``: its defaults) or as plain CLIP (``clip``)."""
    model_cfg, train_cfg = load_preset(preset)
    if variant == "clip":
        model_cfg = dataclasses.replace(model_cfg, decoder=None, head=None)
        train_cfg = dataclasses.replace(train_cfg, removal="none")
    elif variant != "detailclip":
        raise ValueError(f"variant must be clip or detailclip, not {variant!r}")
    return model_cfg, train_cfg


class TrainStep:
    """One training step on fixed random inputs, as the training loop runs it.

    Calling the object runs a step: forward under the loop's autocast (bf16 on CUDA only),
    the finiteness check of every loss, backward, AdamW, the teacher's EMA update.

    Args:
        model_cfg: the model to build.
        train_cfg: the objective's settings.
        batch_size: B; the inputs are two (B, 3, H, W) views and (B, T) token ids.
        device: where it runs.
        seed: seed of the weights and inputs.
    """

    def __init__(self, model_cfg: ModelConfig, train_cfg: TrainConfig, *, batch_size: int,
                 device: torch.device, seed: int = 0):
        torch.manual_seed(seed)
        self.device = device
        self.cfg = train_cfg
        self.model = DetailCLIP(model_cfg)
        self.objective = DetailCLIPObjective(self.model, train_cfg).to(device)
        self.objective.train()
        self.optimizer = build_optimizer(self.objective, train_cfg)
        v, t = model_cfg.vision, model_cfg.text
        g = torch.Generator().manual_seed(seed)
        shape = (batch_size, 3, v.image_size, v.image_size)
        self.view1 = torch.randn(shape, generator=g).to(device)
        self.view2 = torch.randn(shape, generator=g).to(device)
        self.text = torch.randint(0, t.vocab_size, (batch_size, t.context_length), generator=g).to(device)
        self.step = 0

    @property
    def images(self) -> torch.Tensor:
        """Both views as one batch, (VB, 3, H, W), as the objective sees them."""
        return torch.cat([self.view1, self.view2])

    def autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.device.type == "cuda")

    def _set_lr(self) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr_at(self.step, self.cfg)

    def forward_backward(self) -> dict[str, torch.Tensor]:
        """The objective's forward and the backward of its total loss; returns the losses."""
        with self.autocast():
            losses = self.objective(self.view1, self.view2, self.text, step=self.step)
        self.optimizer.zero_grad(set_to_none=True)
        losses["loss"].backward()
        return losses

    def __call__(self, lap: Callable[[str], None] | None = None) -> float:
        """Run one step; returns its total loss.

        Args:
            lap: told the name of each stage as it ends (a stopwatch that synchronises the
                device there times the stages): first the stages the objective marks in its
                own forward (:data:`~detailclip_cli.core.method.stages.STAGES`, heard through
                :func:`~detailclip_cli.core.method.stages.observe_stages`), then
                :data:`STEP_STAGES`. None runs the step unobserved.
        """
        mark = lap or (lambda _: None)
        self._set_lr()
        with observe_stages(lap) if lap is not None else contextlib.nullcontext(), self.autocast():
            losses = self.objective(self.view1, self.view2, self.text, step=self.step)
        _check_finite(losses)
        mark("loss_check")
        self.optimizer.zero_grad(set_to_none=True)
        losses["loss"].backward()
        mark("backward")
        self._clip_and_step()
        mark("optimizer")
        self.objective.update_teacher(self.step)
        mark("ema")
        self.step += 1
        return float(losses["loss"].detach())

    def _clip_and_step(self) -> None:
        if self.cfg.grad_clip > 0:
            params = [p for group in self.optimizer.param_groups for p in group["params"]]
            torch.nn.utils.clip_grad_norm_(params, self.cfg.grad_clip)
        self.optimizer.step()


def _check_finite(losses: dict[str, torch.Tensor]) -> None:
    """The loop's per-step check (one host sync per loss on a GPU, as there)."""
    bad = [k for k, v in losses.items() if not torch.isfinite(v)]
    if bad:
        raise FloatingPointError(f"the {bad[0]} loss became non-finite while benchmarking")


# -- FLOPs ---------------------------------------------------------------------------------------


def _attention_flops(query_shape, key_shape, value_shape, *args, **kwargs) -> int:
    """Forward attention as two batched matmuls: QK^T and AV, (B, H, N, d) each."""
    b, h, n_q, d = query_shape
    n_k, d_v = key_shape[2], value_shape[3]
    return 2 * b * h * n_q * n_k * (d + d_v)


def _attention_backward_flops(grad_out_shape, query_shape, key_shape, value_shape, *args, **kwargs) -> int:
    """Backward as torch counts it for the CUDA kernels: five matmuls (scores recomputed)."""
    b, h, n_q, d = query_shape
    n_k, d_v = key_shape[2], value_shape[3]
    return 2 * b * h * n_q * n_k * (2 * d + 3 * d_v)


def _cpu_attention_formulas() -> dict:
    """FlopCounterMode counts the CUDA attention kernels but not the CPU flash kernel; add it."""
    aten = torch.ops.aten
    formulas = {}
    for name, formula in (("_scaled_dot_product_flash_attention_for_cpu", _attention_flops),
                          ("_scaled_dot_product_flash_attention_for_cpu_backward", _attention_backward_flops)):
        if hasattr(aten, name):
            formulas[getattr(aten, name)] = formula
    return formulas


def count_flops(fn: Callable[[], Any]) -> int:
    """FLOPs of the matmuls, convolutions and attention ``fn()`` runs (a multiply-add is 2)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False, custom_mapping=_cpu_attention_formulas()) as counter:
        fn()
    return int(counter.get_total_flops())


def matmul_gflops(device: torch.device, size: int, dtype: torch.dtype, *, repeats: int, warmup: int) -> float:
    """This machine's dense matmul rate: GFLOP/s of ``(size, size) @ (size, size)`` in ``dtype``."""
    g = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=g).to(device, dtype)
    b = torch.randn(size, size, generator=g).to(device, dtype)
    out = torch.empty(size, size, device=device, dtype=dtype)
    seconds = median_seconds(lambda: torch.mm(a, b, out=out), repeats=repeats, warmup=max(1, warmup), device=device)
    return 2 * size ** 3 / seconds / 1e9


# -- memory and the dry run ----------------------------------------------------------------------


def _peak_rss_bytes() -> int:
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # Linux reports KiB


def _current_rss_bytes() -> int:
    """Resident memory now (Linux ``/proc``); elsewhere the peak so far."""
    try:
        import os

        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return _peak_rss_bytes()


def dry_run(model_cfg: ModelConfig, train_cfg: TrainConfig, device: str = "cpu") -> dict:
    """What one training step of these configs costs, without training: ``pretrain --dry-run``.

    Runs in a fresh process (:func:`dry_run_in_subprocess`): one step at batch 1 as the base,
    two at the configured batch for the peak memory (as :func:`step_memory`), then one counted
    with torch's FLOP counter.

    Returns:
        ``{"parameters": {part: count}, "batch_size", "gflop_per_step", "model_mib",
        "step_peak_mib", "method"}``.
    """
    dev = torch.device(device)
    step = TrainStep(model_cfg, train_cfg, batch_size=train_cfg.batch_size, device=dev)
    memory = _measure_step_memory(step, dev)
    flops = count_flops(step.forward_backward)
    return {"parameters": step.model.num_params(), "batch_size": train_cfg.batch_size,
            "gflop_per_step": round_sig(flops / 1e9, 2), **memory}


def dry_run_in_subprocess(model_cfg: ModelConfig, train_cfg: TrainConfig, device: torch.device) -> dict:
    """:func:`dry_run` in a fresh Python process, so no earlier allocation hides the peak."""
    code = ("import json, sys; from detailclip_cli.tools.costs import dry_run; "
            "from detailclip_cli.core.config import configs_from_dict; "
            "m, t = configs_from_dict(json.loads(sys.argv[1])); print(json.dumps(dry_run(m, t, sys.argv[2])))")
    document = json.dumps({"model": model_cfg.to_dict(), "train": train_cfg.to_dict()})
    return _probe([code, document, str(device)], "the dry run")


def step_memory(preset: str, batch_size: int, variant: str, device: str = "cpu", steps: int = 2) -> dict:
    """Peak memory that training steps at ``batch_size`` add to a built, warmed-up model.

    Meant for a fresh process (:func:`step_memory_in_subprocess`). First one step at batch 1
    runs, so the base already holds what does not grow with the batch: the optimiser state,
    the gradients and the library code the first step pages in (which would otherwise show up
    as hundreds of MiB of "step memory" in RSS). Then ``steps`` steps at ``batch_size`` run. On
    CPU the figure is the process's peak RSS (``ru_maxrss``) minus its RSS at the base; on CUDA,
    ``max_memory_allocated`` over the steps minus the memory allocated at the base.

    Returns:
        ``{"model_mib": base, "step_peak_mib": peak over base, "method": ...}``.
    """
    dev = torch.device(device)
    model_cfg, train_cfg = variant_configs(preset, variant)
    return _measure_step_memory(TrainStep(model_cfg, train_cfg, batch_size=batch_size, device=dev), dev, steps)


def _measure_step_memory(step: TrainStep, dev: torch.device, steps: int = 2) -> dict:
    """:func:`step_memory` of a built step: a batch-1 step as the base, then ``steps`` full ones."""
    inputs = (step.view1, step.view2, step.text)
    step.view1, step.view2, step.text = (x[:1] for x in inputs)
    step()
    step.view1, step.view2, step.text = inputs
    if dev.type == "cuda":
        synchronize(dev)
        base = torch.cuda.memory_allocated(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        for _ in range(steps):
            step()
        synchronize(dev)
        peak = torch.cuda.max_memory_allocated(dev) - base
        method = "torch.cuda.max_memory_allocated over warmed-up model"
    else:
        base = _current_rss_bytes()
        for _ in range(steps):
            step()
        peak = _peak_rss_bytes() - base
        method = "ru_maxrss over RSS of warmed-up model"
    return {"model_mib": round_sig(base / MIB), "step_peak_mib": round_sig(max(peak, 0) / MIB), "method": method}


def step_memory_in_subprocess(preset: str, batch_size: int, variant: str, device: torch.device) -> dict:
    """:func:`step_memory` in a fresh Python process, so no earlier allocation hides the peak."""
    code = ("import json, sys; from detailclip_cli.tools.costs import step_memory; "
            "print(json.dumps(step_memory(sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4])))")
    return _probe([code, preset, str(batch_size), variant, str(device)], "the memory probe")


def _probe(args: list[str], what: str) -> dict:
    """Run ``python -c args[0] args[1:]`` and parse the JSON of its last stdout line."""
    result = subprocess.run([sys.executable, "-c", *args], capture_output=True, text=True)
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"{what} failed: {last}")
    return json.loads(result.stdout.strip().splitlines()[-1])
