"""Write docs/cli.md, the option reference of every command, from the Typer app itself.

Run ``.venv/bin/python docs/gen_cli.py`` after changing a command or an option; the test
``tests/cli/test_docs_cli.py`` fails while docs/cli.md is stale. The page is built from the
app's parameters (names, placeholders, defaults, help, panels), never from the rendered
``--help``, so it does not depend on the width of the terminal that writes it.
"""

from __future__ import annotations

import re
import sys
from enum import Enum
from pathlib import Path

import typer
import typer.main

from detailclip_cli.cli import app

OUT = Path(__file__).with_name("cli.md")
HEADER = """# Command reference

Generated from the app by `docs/gen_cli.py`; do not edit by hand (a test fails when this page is
stale). `detailclip COMMAND --help` shows the same at the terminal.
"""


def render() -> str:
    """The whole page: every registered command, in the order the app lists them."""
    group = typer.main.get_command(app)
    root = typer.Context(group, info_name="detailclip")
    parts = [HEADER]
    for name, command in group.commands.items():
        if not command.hidden:
            parts.append(render_command(name, command, typer.Context(command, info_name=name, parent=root)))
    return "\n".join(parts)


def render_command(name: str, command, ctx) -> str:
    """One command: its usage line, its description and examples, its options by panel."""
    usage = " ".join(["detailclip", name, *command.collect_usage_pieces(ctx)])
    lines = [f"## detailclip {name}", "", "```", usage, "```", "", *describe(command.help or "")]
    panels: dict[str, list] = {}
    for param in command.get_params(ctx):
        if getattr(param, "hidden", False):
            continue
        default_panel = "Arguments" if param.param_type_name == "argument" else "Options"
        panels.setdefault(getattr(param, "rich_help_panel", None) or default_panel, []).append(param)
    # As --help shows them: arguments first, the unnamed options panel next, then the rest.
    order = sorted(panels, key=lambda p: (p != "Arguments", p != "Options"))
    for panel in order:
        lines += ["", f"### {panel}", "", "| option | value | description |", "|---|---|---|"]
        lines += [row(param, ctx) for param in panels[panel]]
    return "\n".join(lines) + "\n"


def describe(help_text: str) -> list[str]:
    """The command's help as Markdown: paragraphs as they are, the indented examples as a code block."""
    out: list[str] = []
    code: list[str] = []
    for line in help_text.splitlines():
        if line.startswith(" "):
            code.append(line.strip())
            continue
        if code and line.strip():
            out += ["```console", *code, "```"]
            code = []
        if code and not line.strip():
            continue  # blank lines between examples stay inside the block
        out.append(re.sub(r"\[bold\](.*?)\[/bold\]", r"**\1**", line))
    if code:
        out += ["```console", *code, "```"]
    while out and not out[-1].strip():
        out.pop()
    return out


def row(param, ctx) -> str:
    """One option as a table row: its names, its placeholder, its help with the default."""
    names = ", ".join(f"`{n}`" for n in [*param.opts, *param.secondary_opts])
    if param.param_type_name == "argument":
        names = f"`{param.name.upper()}...`" if param.nargs != 1 else f"`{param.name.upper()}`"
    value = "" if getattr(param, "is_flag", False) else param.display_type_rich(ctx) or ""
    low, high = getattr(param, "min", None), getattr(param, "max", None)
    if low is not None or high is not None:  # as --help shows a range: x>=1, 0.0<=x<=1.0
        value += " [" + (f"{low}<=" if low is not None and high is not None else "") + "x" + (
            f"<={high}" if high is not None else f">={low}") + "]"
    help_text = " ".join((param.help or "").split())
    default = param.default
    shown = getattr(param, "show_default", False) and default not in (None, False, ...) and not callable(default)
    if shown:
        values = default if isinstance(default, (list, tuple)) else [default]
        help_text += " Default: " + ", ".join(str(v.value if isinstance(v, Enum) else v) for v in values) + "."
    return f"| {names} | {cell(value)} | {cell(help_text)} |"


def cell(text: str) -> str:
    """Text safe inside a Markdown table cell."""
    return text.replace("|", "\\|").strip()


def main() -> None:
    OUT.write_text(render())
    print(f"wrote {OUT}", file=sys.stderr)


if __name__ == "__main__":
    main()
