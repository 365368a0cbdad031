"""Shared CLI pieces: option aliases, the stderr console, progress drawing."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

DataOpt = Annotated[str, typer.Option("--data", help="Training data: 'demo', a folder (images + .txt captions, or class sub-folders), or a CSV/TSV file.")]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto, cpu or cuda[:N].")]
SeedOpt = Annotated[Optional[int], typer.Option("--seed", help="Random seed (data order, augmentation, init, random removal).")]
WorkersOpt = Annotated[Optional[int], typer.Option("--workers", min=0, help="Data-loader worker processes.")]
OutOpt = Annotated[Optional[Path], typer.Option("--out", help="Output folder.")]


def err_console():
    """A Rich console on stderr: messages and progress never mix with results on stdout."""
    from rich.console import Console

    return Console(stderr=True)


def format_stats(info) -> str:
    """One line of a training step's figures: each named loss, lr, throughput."""
    losses = "  ".join(f"{k} {v:.3f}" for k, v in info.losses.items())
    return f"{losses}  lr {info.lr:.2e}  {info.images_per_sec:.0f} img/s"


class StepProgress:
    """A Rich progress bar over training steps with the latest figures on a line below it.

    When stderr is not a terminal (logs, CI) it prints one plain line per logged step instead.
    """

    def __init__(self, console, total: int):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
        from rich.text import Text

        stats = self
        self.console = console
        self.line = ""

        class _Progress(Progress):
            def get_renderables(self):
                yield self.make_tasks_table(self.tasks)
                yield Text(stats.line, style="dim")

        self.progress = _Progress(
            TextColumn("[progress.description]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
            console=console, disable=not console.is_terminal,
        )
        self.task = self.progress.add_task("train", total=total)

    def __enter__(self):
        self.progress.__enter__()
        return self

    def __exit__(self, *exc):
        return self.progress.__exit__(*exc)

    def show(self, info) -> None:
        self.line = format_stats(info)
        self.progress.update(self.task, completed=info.step)
        if not self.console.is_terminal:
            self.console.print(f"step {info.step}/{info.total_steps}  {self.line}", soft_wrap=True)
