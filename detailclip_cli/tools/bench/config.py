"""What ``bench`` measures: the sections, in the order they run, and :class:`BenchConfig`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from detailclip_cli.core.config import ConfigError

# In the order they run: the step times are measured first (later sections compare with them).
SECTIONS = ("train", "split", "keep", "flops", "scores", "data", "inference", "bulk", "startup", "memory")
LOADER_WORKERS = (0, 1, 2)
CPU_BATCH_SIZE = 8  # default batch on CPU; on CUDA the preset's own batch
BULK_IMAGES = 128  # images of the bulk zero-shot figure (the figure: --bulk-images 5000)


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


def parse_sections(values: Sequence[str] | None) -> tuple[str, ...]:
    """``["train,keep", "flops"]`` -> ``("train", "keep", "flops")``; None or empty = all."""
    names = [s.strip() for v in values or () for s in v.split(",") if s.strip()]
    return tuple(dict.fromkeys(names)) or SECTIONS
