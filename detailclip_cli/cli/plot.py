"""``detailclip plot``: training curves from metrics.jsonl files, runs overlaid."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from detailclip_cli.cli import options as opts
from detailclip_cli.cli.console import err_console, say
from detailclip_cli.errors import UsageError


def plot(
    metrics: Annotated[list[Path], typer.Argument(help="metrics.jsonl files, or run folders that hold one.", show_default=False)],
    out: Annotated[Path, typer.Option(
        "--out", "-o", metavar="FILE", rich_help_panel=opts.OUTPUT, help="The PNG (or PDF/SVG) to write.")] = Path("curves.png"),
    keys: Annotated[Optional[str], typer.Option(
        "--keys", metavar="A,B", rich_help_panel=opts.OUTPUT, show_default=False,
        help="Comma-separated quantities to draw (default: every logged one).")] = None,
) -> None:
    """Plot training curves (each named loss, lr, collapse metrics) of one or more runs in one figure.

    [bold]Examples[/bold]

      detailclip plot runs/demo/metrics.jsonl --out curves.png

      detailclip plot runs/clip runs/detailclip --keys loss,clip --out compare.png
    """
    # imported on use, not at the top: --help must not load torch (start-up time)
    from detailclip_cli.core.store.run import RunFolder, read_metrics

    console = err_console()
    runs = {}
    for path in metrics:
        file = RunFolder(path).metrics_file if path.is_dir() else path
        if not file.is_file():
            raise UsageError(f"no metrics file at {file}")
        records = read_metrics(file, strict=True)
        if not records:
            raise UsageError(f"{file} holds no metrics")
        name = file.parent.name if file.name == RunFolder.METRICS_FILE else file.stem
        while name in runs:
            name += "'"
        runs[name] = records

    # imported on use, not at the top: --help must not load matplotlib (start-up time)
    from detailclip_cli.plots import training_curves_figure

    try:
        fig = training_curves_figure(runs, keys=keys.split(",") if keys else None)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    say(console, f"wrote {out} ({len(runs)} run(s))")
    print(out)
