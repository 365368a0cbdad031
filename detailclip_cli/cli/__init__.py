"""The ``detailclip`` command line: a Typer app, one module per command.

Commands import torch and the core lazily, inside their bodies, so ``--help`` stays fast.
"""

from __future__ import annotations

import sys

import typer

from detailclip_cli import __version__, allocator
from detailclip_cli.cli import (
    attn_map,
    bench,
    distill,
    embed,
    evaluate,
    export,
    info,
    plot,
    pretrain,
    reconstruct,
    search,
    shard,
    zero_shot,
)
from detailclip_cli.cli.console import is_main_rank
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


def _reflow(doc: str) -> str:
    """Join a docstring's wrapped lines into paragraphs (Rich help keeps single newlines),
    leaving indented lines (the examples) and blank-line breaks as they are."""
    import inspect

    paragraphs, current = [], []
    for line in inspect.cleandoc(doc).splitlines():
        if not line.strip() or line.startswith(" "):
            if current:
                paragraphs.append(" ".join(current))
                current = []
            paragraphs.append(line)
        else:
            current.append(line.strip())
    if current:
        paragraphs.append(" ".join(current))
    return "\n".join(paragraphs)


def _register(name: str, fn, *, no_args_is_help: bool) -> None:
    app.command(name, help=_reflow(fn.__doc__ or ""), no_args_is_help=no_args_is_help)(fn)


_register("pretrain", pretrain.pretrain, no_args_is_help=False)
_register("distill", distill.distill, no_args_is_help=False)
_register("zero-shot", zero_shot.zero_shot, no_args_is_help=True)
_register("attn-map", attn_map.attn_map, no_args_is_help=True)
_register("reconstruct", reconstruct.reconstruct, no_args_is_help=True)
_register("evaluate", evaluate.evaluate, no_args_is_help=False)
_register("embed", embed.embed, no_args_is_help=True)
_register("search", search.search, no_args_is_help=True)
_register("plot", plot.plot, no_args_is_help=True)
_register("bench", bench.bench, no_args_is_help=False)
_register("info", info.info, no_args_is_help=False)
_register("shard", shard.shard, no_args_is_help=True)
_register("export", export.export, no_args_is_help=True)


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
    allocator.keep_memory_mapped()  # before any command imports torch
    # Typer carries its own copy of click; its exception classes are reached through a public name.
    click_errors = {c.__name__: c for c in typer.BadParameter.__mro__}
    usage_error, click_exception = click_errors["UsageError"], click_errors["ClickException"]
    try:
        # Not standalone: click's usage errors come here instead of becoming a boxed panel.
        code = app(standalone_mode=False)
    except DetailclipError as exc:
        if is_main_rank():  # under torchrun every process stops; rank 0 alone says why
            print(f"error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except usage_error as exc:
        if type(exc).__name__ == "NoArgsIsHelpError":  # the command's help is already printed
            sys.exit(exc.exit_code)
        command = exc.ctx.command_path if exc.ctx is not None else "detailclip"
        message = " ".join(exc.format_message().split())  # click may wrap a long message
        if is_main_rank():
            print(f"error: {message} (see `{command} --help`)", file=sys.stderr)
        sys.exit(2)
    except click_exception as exc:
        print(f"error: {' '.join(exc.format_message().split())}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        code = 130
    if code == 130:
        # Ctrl-C outside a run's graceful stop, or a second one during a run (console.GracefulStop,
        # which says what is kept); Typer turns a KeyboardInterrupt into this exit code.
        if is_main_rank():
            print("error: interrupted (Ctrl-C)", file=sys.stderr)
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)
