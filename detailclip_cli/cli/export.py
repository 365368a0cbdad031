"""``detailclip export``: write a model in open_clip's or timm's own format."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from detailclip_cli.cli import options as opts
from detailclip_cli.cli.console import err_console, one_line, say
from detailclip_cli.core.choices import ExportFormat, ExportWeights
from detailclip_cli.core.store.shipped import model_name


def export(
    model: opts.ModelArg = None,
    to: Annotated[ExportFormat, typer.Option(
        "--to", rich_help_panel=opts.OUTPUT, show_default=False,
        help="open_clip (image + text towers) or timm (the image tower as a VisionTransformer).")] = ...,
    out: Annotated[Path, typer.Option(
        "--out", metavar="DIR", rich_help_panel=opts.OUTPUT, show_default=False, help="Folder to write (new or empty).")] = ...,
    weights: Annotated[ExportWeights, typer.Option(
        "--weights", rich_help_panel=opts.MODEL,
        help="student, or the EMA teacher of a run folder.")] = ExportWeights.student,
    pretrained: opts.PretrainedOpt = None,
    force: Annotated[bool, typer.Option(
        "--force", metavar="", rich_help_panel=opts.OUTPUT,
        help="Write into a non-empty --out: the export's two files are replaced, nothing else there is "
        "touched.")] = False,
    no_verify: opts.NoVerifyOpt = False,
) -> None:
    """Export a model to open_clip or timm; the written copy is loaded back and checked.

    open_clip gets open_clip_config.json + open_clip_model.safetensors (load with
    open_clip.create_model_and_transforms('local-dir:DIR'), tokenizer
    open_clip.get_tokenizer('local-dir:DIR')); timm gets config.json + model.safetensors (load
    with timm.create_model('local-dir:DIR', pretrained=True); forward_features gives our image
    tower's tokens). Decoder and distillation head are not exported. Refused: the conv stem
    (both), different activations in the two towers (open_clip), a LayerNorm eps other than
    1e-6 or 1e-5 (timm).

    [bold]Examples[/bold]

      detailclip export runs/demo --to open_clip --out exports/demo-openclip

      detailclip export runs/demo --to timm --weights teacher --out exports/demo-timm
    """
    # imported on use, not at the top: --help must not load torch (start-up time)
    from detailclip_cli.core.store.export import (
        export_model,  # torch: only when the command runs
    )

    console = err_console()
    done = export_model(model, to=to.value, out=out, weights=weights.value, pretrained=pretrained, force=force,
                        verify=not no_verify)
    name = model_name(model)
    say(console, f"wrote {to.value} export of {one_line(name)} ({weights.value} weights): "
                 + ", ".join(one_line(f) for f in done.files))
    say(console, f"checked: loaded back with {to.value}, max abs difference {done.max_abs_diff:.2g}")
    say(console, f"load it: {one_line(done.load)}")
