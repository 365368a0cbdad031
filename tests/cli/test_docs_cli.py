"""docs/cli.md is generated from the Typer app (docs/gen_cli.py) and never drifts from it."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "docs" / "gen_cli.py"


def load_generator():
    spec = importlib.util.spec_from_file_location("gen_cli", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cli_reference_is_current():
    gen = load_generator()
    assert (ROOT / "docs" / "cli.md").read_text() == gen.render(), (
        "docs/cli.md is stale: run `.venv/bin/python docs/gen_cli.py`")


def test_cli_reference_lists_every_visible_option_of_every_command():
    import typer.main

    from detailclip_cli.cli import app

    text = (ROOT / "docs" / "cli.md").read_text()
    group = typer.main.get_command(app)
    for name, command in group.commands.items():
        assert f"## detailclip {name}\n" in text
        section = text.split(f"## detailclip {name}\n")[1].split("\n## ")[0]
        for param in command.params:
            if param.param_type_name == "option" and not param.hidden:
                assert f"`{param.opts[0]}`" in section, (name, param.opts[0])
    # A hidden alias stays out of the reference, its new name is in.
    reconstruct = text.split("## detailclip reconstruct\n")[1].split("\n## ")[0]
    assert "`--removal`" in reconstruct and "`--strategy`" not in reconstruct


def test_generated_page_does_not_depend_on_the_terminal_width():
    code = f"import runpy; m = runpy.run_path({str(SCRIPT)!r}); print(m['render'](), end='')"
    pages = [subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            env={**os.environ, "COLUMNS": columns}).stdout for columns in ("40", "200")]
    assert pages[0] == pages[1] == (ROOT / "docs" / "cli.md").read_text()
