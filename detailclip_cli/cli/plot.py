"""``detailclip plot``: training curves from metrics.jsonl files, runs overlaid."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from detailclip_cli.cli._use import say
from detailclip_cli.cli._common import err_console
from detailclip_cli.errors import UsageError


def plot(
    metrics: Annotated[list[Path], typer.Argument(help="metrics.jsonl files, or run folders that hold one.", show_default=False)],
    out: Annotated[Path, typer.Option("--out", "-o", help="The PNG (or PDF/SVG) to write.")] = Path("curves.png"),
    keys: Annotated[Optional[str], typer.Option("--keys", help="Comma-separated quantities to draw (default: every logged one).", show_default=False)] = None,
) -> None:
    """Plot training curves (each named loss, lr, collapse metrics) of one or more runs in one figure.

    [bold]Examples[/bold]

      detailclip plot runs/demo/metrics.jsonl --out curves.png

      detailclip plot runs/clip runs/detailclip --keys loss,clip --out compare.png
    """
    console = err_console()
    runs = {}
    for path in metrics:
        file = path / "metrics.jsonl" if path.is_dir() else path
        if not file.is_file():
            raise UsageError(f"no metrics file at {file}")
        records = []
        for n, line in enumerate(file.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                raise UsageError(f"{file}:{n} is not a JSON line") from None
            if not isinstance(record, dict) or "step" not in record:
                raise UsageError(f"{file}:{n} has no 'step' (not a detailclip metrics.jsonl?)")
            records.append(record)
        if not records:
            raise UsageError(f"{file} holds no metrics")
        name = file.parent.name if file.name == "metrics.jsonl" else file.stem
        while name in runs:
            name += "'"
        runs[name] = records

    from detailclip_cli.plots import training_curves_figure

    try:
        fig = training_curves_figure(runs, keys=keys.split(",") if keys else None)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    say(console, f"wrote {out} ({len(runs)} run(s))")
    print(out)
