"""Where a run's figures go besides ``metrics.jsonl``: TensorBoard and Weights & Biases (``--log-to``).

``metrics.jsonl`` stays the source of truth (``plot``, ``info`` and resume read it); a logger
gets each of its rows as it is written, the same quantities under the same names, plus
pictures every ``pictures_every`` steps when the run was given a way to draw them (the CLI
passes the attention map and reconstruction of a fixed validation batch). Only rank 0 opens
loggers. Each backend is an optional extra: ``pip install 'detailclip[tensorboard]'`` or
``'detailclip[wandb]'``; asking for one that is not installed is a one-line error before the
run starts.

TensorBoard writes event files into ``RUN/tensorboard/`` (``tensorboard --logdir RUN``).
W&B runs in the mode its environment sets (``WANDB_MODE=offline`` writes ``RUN/wandb/`` for a
later ``wandb sync``), project ``detailclip`` unless ``WANDB_PROJECT`` says otherwise, named
after the run folder, with the run's settings as its config.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from detailclip_cli.core.choices import LogTarget
from detailclip_cli.core.config import ConfigError
from detailclip_cli.core.store.run import RunFolder

# Pictures of a model: name -> (H, W, 3) uint8 image; the model is in eval mode, under no_grad.
Pictures = Callable[[torch.nn.Module], dict[str, np.ndarray]]


class Logger(Protocol):
    """A place the loop sends rank 0's figures to."""

    def log_metrics(self, row: dict[str, Any]) -> None:
        """One ``metrics.jsonl`` row (``row["step"]`` is its step)."""

    def log_pictures(self, step: int, model: torch.nn.Module) -> None:
        """Called after every step; draws and sends pictures when ``step`` is due."""

    def close(self) -> None: ...


def parse_log_to(value: str | Sequence[str] | None) -> tuple[str, ...]:
    """``"tensorboard,wandb"`` (or a list) -> the backends, checked and installed.

    Raises:
        ConfigError: an unknown backend, or one whose package is not installed.
    """
    if value is None:
        return ()
    names = [n.strip() for n in (value.split(",") if isinstance(value, str) else value) if n.strip()]
    for name in names:
        if name not in tuple(LogTarget):
            raise ConfigError(f"--log-to takes {', '.join(LogTarget)} (comma-separated), not {name!r}")
        if importlib.util.find_spec(name) is None:  # each backend's package has its name
            raise ConfigError(f"--log-to {name} needs the {name} package: "
                              f"pip install 'detailclip[{name}]'")
    return tuple(dict.fromkeys(names))


def _scalars(row: dict[str, Any]) -> dict[str, float]:
    """The numbers of a metrics row but the step itself."""
    return {k: float(v) for k, v in row.items()
            if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)}


class _PictureSchedule:
    """Draws pictures of the model every ``every`` steps (never with 0 or no ``pictures``)."""

    def __init__(self, pictures: Pictures | None, every: int):
        self.pictures, self.every = pictures, every

    def due(self, step: int) -> bool:
        return self.pictures is not None and self.every > 0 and step % self.every == 0

    def draw(self, model: torch.nn.Module) -> dict[str, np.ndarray]:
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                return self.pictures(model)
        finally:
            model.train(was_training)


class TensorBoardLogger:
    """Scalars and images in TensorBoard event files under ``folder``."""

    def __init__(self, folder: Path, *, pictures: Pictures | None = None, pictures_every: int = 0):
        from torch.utils.tensorboard import SummaryWriter  # needs the tensorboard package

        self.writer = SummaryWriter(log_dir=str(folder))
        self.schedule = _PictureSchedule(pictures, pictures_every)

    def log_metrics(self, row: dict[str, Any]) -> None:
        for name, value in _scalars(row).items():
            self.writer.add_scalar(name, value, row["step"])
        self.writer.flush()

    def log_pictures(self, step: int, model: torch.nn.Module) -> None:
        if self.schedule.due(step):
            for name, image in self.schedule.draw(model).items():
                self.writer.add_image(name, image, step, dataformats="HWC")
            self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class WandbLogger:
    """Scalars and images in a Weights & Biases run (its mode from the environment)."""

    def __init__(self, folder: Path, *, name: str, config: dict[str, Any], pictures: Pictures | None = None,
                 pictures_every: int = 0):
        import os

        import wandb  # needs the wandb package

        self.wandb = wandb
        folder.mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "detailclip"), name=name, dir=str(folder),
                              config=config, reinit="finish_previous")
        self.schedule = _PictureSchedule(pictures, pictures_every)

    def log_metrics(self, row: dict[str, Any]) -> None:
        self.run.log(_scalars(row), step=row["step"])

    def log_pictures(self, step: int, model: torch.nn.Module) -> None:
        if self.schedule.due(step):
            self.run.log({k: self.wandb.Image(v) for k, v in self.schedule.draw(model).items()}, step=step)

    def close(self) -> None:
        self.run.finish()


@dataclass(frozen=True)
class LogTo:
    """Which loggers a run opens (on rank 0) and the pictures they show.

    Attributes:
        names: backends, :class:`~detailclip_cli.core.choices.LogTarget` values (see :func:`parse_log_to`).
        pictures: draws the pictures of the model (None: scalars only).
        pictures_every: steps between pictures (0: never).
    """

    names: tuple[str, ...] = ()
    pictures: Pictures | None = None
    pictures_every: int = 0

    def open(self, run_folder: RunFolder | Path, config: dict[str, Any]) -> list[Logger]:
        """The loggers of a run folder, each in its :meth:`RunFolder.log_dir` (W&B names its own
        ``wandb/`` inside the folder it is given, so it is given the run folder)."""
        run = run_folder if isinstance(run_folder, RunFolder) else RunFolder(run_folder)
        loggers: list[Logger] = []
        for name in parse_log_to(self.names):
            if name == LogTarget.tensorboard:
                loggers.append(TensorBoardLogger(run.log_dir(LogTarget.tensorboard), pictures=self.pictures,
                                                 pictures_every=self.pictures_every))
            else:
                loggers.append(WandbLogger(run.path, name=run.path.resolve().name, config=config,
                                           pictures=self.pictures, pictures_every=self.pictures_every))
        return loggers
