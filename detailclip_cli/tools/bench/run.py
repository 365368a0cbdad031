"""One bench run: the selected sections in their fixed order, into one record with its targets."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

import detailclip_cli.tools.bench.data as data
import detailclip_cli.tools.bench.inference as inference
import detailclip_cli.tools.bench.startup as startup
import detailclip_cli.tools.bench.step as step
from detailclip_cli import allocator
from detailclip_cli.core.config import load_preset
from detailclip_cli.core.device import resolve_device
from detailclip_cli.tools.bench.config import CPU_BATCH_SIZE, SECTIONS, BenchConfig
from detailclip_cli.tools.bench.session import Session
from detailclip_cli.tools.bench.targets import check_targets
from detailclip_cli.tools.costs import round_sig

# Each section's measurement: name -> function of the shared session giving its part of the record.
MEASURE: dict[str, Callable[[Session], dict]] = {
    "train": step.train, "split": step.split, "keep": step.keep, "flops": step.flops, "scores": step.scores,
    "data": data.data, "inference": inference.inference, "bulk": inference.bulk, "startup": startup.startup,
    "memory": step.memory,
}


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
    session = Session(cfg, device=device, batch_size=batch_size, on_stage=on_stage or (lambda _: None))
    record: dict[str, Any] = {
        "preset": cfg.preset, "batch_size": batch_size, "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name(),
        "threads": torch.get_num_threads(), "allocator": allocator.describe(), "torch": torch.__version__,
        "repeats": cfg.repeats, "warmup": cfg.warmup,
    }
    if "bulk" in cfg.sections:
        record["bulk_images"] = cfg.bulk_images
    t0, cpu0, load0 = time.perf_counter(), time.process_time(), _load_average()
    try:
        for section in SECTIONS:  # a fixed order: the step times are measured first
            if section in cfg.sections:
                record[section] = MEASURE[section](session)
    finally:
        session.close()
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
