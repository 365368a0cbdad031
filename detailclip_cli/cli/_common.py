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
