"""What the sections of one bench run share: the built training steps, the step times, the FLOP
counts, the generated demo images and a scratch folder, each made once on first use."""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from detailclip_cli.core.data.demo import generate_demo
from detailclip_cli.tools.bench.config import BenchConfig
from detailclip_cli.tools.bench.figures import median
from detailclip_cli.tools.costs import TrainStep, count_flops, interleaved_runs, variant_configs


class Session:
    """The state the sections share; :meth:`close` removes its scratch folder.

    Args:
        cfg: what to measure.
        device: where to run.
        batch_size: images per training step (and per inference batch).
        on_stage: told a short description before each measurement (for progress display).
    """

    def __init__(self, cfg: BenchConfig, *, device: torch.device, batch_size: int,
                 on_stage: Callable[[str], None]):
        self.cfg, self.device, self.batch_size, self.on_stage = cfg, device, batch_size, on_stage
        self._steps: dict[str, TrainStep] = {}
        self._rounds: dict[str, list[float]] | None = None
        self._flops: dict[str, int] = {}
        self._workdir = tempfile.TemporaryDirectory(prefix="detailclip-bench-")
        self._images: list[Path] = []

    def close(self) -> None:
        self._workdir.cleanup()

    @property
    def scratch(self) -> Path:
        """A folder for this run's files (images, exported models, command outputs)."""
        return Path(self._workdir.name)

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
        return median(self.step_rounds()[variant])

    def step_flops(self, variant: str) -> int:
        if variant not in self._flops:
            self._flops[variant] = count_flops(self.step(variant).forward_backward)
            self.step(variant).optimizer.zero_grad(set_to_none=True)
        return self._flops[variant]

    def images(self, count: int) -> list[Path]:
        """``count`` demo-sized PNG images (demo validation images, generated once, masks left out)."""
        if len(self._images) < count:
            self.on_stage(f"generating {count} demo images")
            self._images = demo_images(self.scratch / "images", count)
        return self._images[:count]


def demo_images(folder: Path, count: int) -> list[Path]:
    """Write the first ``count`` demo validation images into ``folder``; their PNG paths, in order."""
    folder.mkdir(parents=True, exist_ok=True)
    generate_demo(folder, sizes={"val": count})
    images = [p for p in folder.glob("val/*/*.png") if not p.name.endswith(".mask.png")]
    return sorted(images, key=lambda p: p.stem)  # the demo's ids: generation order
