"""``detailclip export``: write a model in open_clip's or timm's own format."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from detailclip_cli.cli._use import PretrainedOpt, one_line, say


class ExportFormat(str, Enum):
    open_clip = "open_clip"
    timm = "timm"


class WhichWeights(str, Enum):
    student = "student"
    teacher = "teacher"


def export(
    model: Annotated[Optional[str], typer.Argument(
        help="A run folder, a model folder, or open_clip:NAME (default: the shipped model).",
        show_default=False)] = None,
    to: Annotated[ExportFormat, typer.Option("--to", help="open_clip (image + text towers) or timm (the image "
                                             "tower as a VisionTransformer).", show_default=False)] = ...,
    out: Annotated[Path, typer.Option("--out", help="Folder to write (new or empty).", show_default=False)] = ...,
    weights: Annotated[WhichWeights, typer.Option("--weights", help="student, or the EMA teacher of a run "
                                                  "folder.")] = WhichWeights.student,
    pretrained: PretrainedOpt = None,
    force: Annotated[bool, typer.Option("--force", help="Write into a non-empty --out: the export's two files "
                                        "are replaced, nothing else there is touched.")] = False,
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
    from detailclip_cli.cli._common import err_console
    from detailclip_cli.core.store.export import export_model

    console = err_console()
    done = export_model(model, to=to.value, out=out, weights=weights.value, pretrained=pretrained, force=force)
    name = model or "assets/detailclip-tiny"
    say(console, f"wrote {to.value} export of {one_line(name)} ({weights.value} weights): "
                 + ", ".join(one_line(f) for f in done.files))
    say(console, f"checked: loaded back with {to.value}, max abs difference {done.max_abs_diff:.2g}")
    say(console, f"load it: {one_line(done.load)}")
