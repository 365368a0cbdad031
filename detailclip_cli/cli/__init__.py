"""The ``detailclip`` command line: a Typer app, one module per command.

Commands import torch and the core lazily, inside their bodies, so ``--help`` stays fast.
"""

from __future__ import annotations

import sys

import typer

from detailclip_cli import __version__
from detailclip_cli.cli import attn_map, distill, evaluate, plot, pretrain, reconstruct, zero_shot
from detailclip_cli.errors import DetailclipError

app = typer.Typer(
    name="detailclip",
    help="DetailCLIP: CLIP pretraining that keeps fine detail (self-distillation, attention-guided "
    "token removal, pixel reconstruction).\n\nExample: detailclip pretrain --preset tiny --steps 300 --out runs/demo",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)
app.command("pretrain", no_args_is_help=False)(pretrain.pretrain)
app.command("distill", no_args_is_help=False)(distill.distill)
app.command("zero-shot", no_args_is_help=True)(zero_shot.zero_shot)
app.command("attn-map", no_args_is_help=True)(attn_map.attn_map)
app.command("reconstruct", no_args_is_help=True)(reconstruct.reconstruct)
app.command("evaluate", no_args_is_help=False)(evaluate.evaluate)
app.command("plot", no_args_is_help=True)(plot.plot)


def _version(value: bool) -> None:
    if value:
        print(f"detailclip {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
) -> None:
    """DetailCLIP command-line tools."""


def main() -> None:
    """Console entry point: people's errors become one line on stderr and an exit code."""
    try:
        app()
    except DetailclipError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
