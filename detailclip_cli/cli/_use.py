"""Pieces shared by the commands that use a trained model (zero-shot, attn-map, reconstruct).

Option aliases are defined once here; helpers load the model with a one-line note on stderr,
feed images in batches behind a progress bar, name every input that failed, and write results
as a Rich table, JSON, JSON lines or CSV to stdout or ``--output``. Nothing here imports torch
at module level.
"""

from __future__ import annotations

import contextlib
import csv
import json
import re
import sys
from collections.abc import Iterator, Sequence
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from detailclip_cli.errors import UsageError

ImagesArg = Annotated[
    Optional[list[str]],
    typer.Argument(help="Image files, folders (searched recursively), globs, or - to read paths from stdin.",
                   show_default=False),
]
ModelOpt = Annotated[
    Optional[str],
    typer.Option("--model", "-m", help="A run folder, a model folder (model.safetensors + config.json), or "
                 "open_clip:NAME. Default: the model shipped in assets/detailclip-tiny.", show_default=False),
]
PretrainedOpt = Annotated[
    Optional[str],
    typer.Option("--pretrained", help="With --model open_clip:NAME: an open_clip pretrained tag or a local "
                 "weights file.", show_default=False),
]
BatchSizeOpt = Annotated[int, typer.Option("--batch-size", min=1, help="Images per forward pass.")]
KeepRatioOpt = Annotated[float, typer.Option("--keep-ratio", min=0.0, max=1.0,
                                             help="Fraction of patch tokens kept, in (0, 1].")]
BlockSizeOpt = Annotated[
    Optional[int],
    typer.Option("--block-size", min=1, help="Remove whole NxN blocks of patches. Default: the run's block "
                 "size (else 2) when it divides the patch grid, else 1.", show_default=False),
]
LayerOpt = Annotated[
    Optional[str],
    typer.Option("--layer", help="Attention used for scores: mean (over all blocks), last, or a block index. "
                 "Default: the run's --score-layer, else mean.", show_default=False),
]
OutputOpt = Annotated[Optional[Path], typer.Option("--output", "-o", help="Write results to this file "
                                                   "instead of stdout.", show_default=False)]

# Progress bars appear from this many images on (and only when stderr is a terminal).
PROGRESS_MIN_IMAGES = 16


class TableOrJson(str, Enum):
    table = "table"
    json = "json"


class ResultFormat(str, Enum):
    table = "table"
    json = "json"
    jsonl = "jsonl"
    csv = "csv"


class PictureOrJson(str, Enum):
    png = "png"
    json = "json"


def say(console, text: str, **style) -> None:
    """One plain line on stderr: no markup or highlighting, never wrapped (paths stay whole)."""
    console.print(text, markup=False, highlight=False, soft_wrap=True, **style)


def one_line(text: object) -> str:
    """``text`` safe to print as one line: control characters (a newline in a file name) and
    lone surrogates (a file name that is not UTF-8) escaped, as Python writes them."""
    text = str(text)
    return "".join(_escape(c) for c in text) if any(_unsafe(c) for c in text) else text


def _unsafe(c: str) -> bool:
    o = ord(c)
    return o < 0x20 or 0x7F <= o <= 0x9F or 0xD800 <= o <= 0xDFFF


def _escape(c: str) -> str:
    return c.encode("unicode_escape", "backslashreplace").decode("ascii") if _unsafe(c) else c


# -- model and images -------------------------------------------------------------------------------


def load_model(spec: str | None, pretrained: str | None, device: str, console):
    """Resolve the model and say on stderr which one it is."""
    from detailclip_cli.core.store.lookup import resolve_model
    from detailclip_cli.core.device import resolve_device

    model = resolve_model(spec, pretrained=pretrained, device=resolve_device(device))
    v = model.cfg.vision
    name = spec or "assets/detailclip-tiny"
    extra = f" ({pretrained})" if pretrained else ""
    say(console, f"model {name}{extra}: ViT {v.depth}x{v.width}, {v.image_size} px, patch {v.patch_size}")
    return model


def gather_images(images: Sequence[str] | None, console) -> tuple[list[Path], int]:
    """Expand IMAGES...; name each argument that gave no image on stderr, one line each.

    Returns:
        (paths, number of arguments that failed: missing, or folders without images).
    """
    from detailclip_cli.cli._inputs import expand_inputs

    if not images:
        raise UsageError("no images given (files, folders, globs, or - for paths on stdin)")
    inputs = expand_inputs(list(images))
    for arg in inputs.missing:
        say(console, f"error: no such file, folder or glob match: {one_line(arg)}")
    for arg in inputs.empty:
        say(console, f"error: no images in folder: {one_line(arg)}")
    failed = len(inputs.missing) + len(inputs.empty)
    if not inputs.paths and not failed:
        say(console, "error: no images found in the given inputs")
        return [], 1
    return inputs.paths, failed


@contextlib.contextmanager
def progress_bar(console, total: int, description: str) -> Iterator:
    """A Rich progress bar on stderr; ``advance(n)`` is a no-op when there are few images."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    enabled = total >= PROGRESS_MIN_IMAGES and console.is_terminal
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=console, disable=not enabled, transient=True) as progress:
        task = progress.add_task(description, total=total)
        yield lambda n: progress.advance(task, n)


class ImageFeed:
    """Batches of loaded images on the model's device; each unreadable file is named on stderr.

    Iterate for ``ImageBatch`` records (each holds at least one image); afterwards ``failed``
    is the number of files that could not be read.
    """

    def __init__(self, model, paths: list[Path], *, batch_size: int, console, description: str):
        self.model, self.paths, self.batch_size = model, paths, batch_size
        self.console, self.description = console, description
        self.failed = 0

    def __iter__(self) -> Iterator:
        from detailclip_cli.core.use.batching import iter_image_batches

        v = self.model.cfg.vision
        device = self.model.logit_scale.device
        with progress_bar(self.console, len(self.paths), self.description) as advance:
            for batch in iter_image_batches(self.paths, image_size=v.image_size, mean=v.mean, std=v.std,
                                            batch_size=self.batch_size):
                for _, message in batch.errors:
                    say(self.console, f"error: {one_line(' '.join(message.split()))}")
                self.failed += len(batch.errors)
                if batch.images is not None:
                    batch.images = batch.images.to(device)
                    yield batch
                advance(len(batch.paths) + len(batch.errors))


def unique_name(path: Path, suffix: str, used: set[str]) -> str:
    """``<stem><suffix>``, with ``-2``, ``-3`` ... added when two inputs share a stem.

    Control characters and undecodable bytes in the stem become ``_``, so each written path
    stays one printable line.
    """
    stem = "".join("_" if _unsafe(c) else c for c in path.stem) or "image"
    name, n = f"{stem}{suffix}", 1
    while name in used:
        n += 1
        name = f"{stem}-{n}{suffix}"
    used.add(name)
    return name


def run_defaults(spec: str | None, model, *, layer: str | None, block_size: int | None) -> tuple[Any, int]:
    """The score layer and block size to use: given values, else the run's, else mean / 2-or-1."""
    from detailclip_cli.core.use.probes import check_layer, default_block_size
    from detailclip_cli.core.store.lookup import run_train_settings

    settings = run_train_settings(spec) or {}
    if layer is None:
        layer = str(settings.get("score_layer", "mean"))
    if block_size is None:
        block_size = default_block_size(model, int(settings.get("block_size", 2)))
    return check_layer(model, layer), block_size


# -- writing results ----------------------------------------------------------------------------------


@contextlib.contextmanager
def open_output(output: Path | None) -> Iterator:
    """The results stream: ``--output`` (created with its folder) or stdout.

    File names are bytes on POSIX, and one that is not UTF-8 reaches Python with lone
    surrogates; both streams write those back as the original bytes (as ``ls`` does), where a
    strict UTF-8 stdout would fail the whole result on one odd name.
    """
    if output is None:
        stream = sys.stdout
        if getattr(stream, "errors", None) == "strict" and hasattr(stream, "reconfigure"):
            with contextlib.suppress(Exception):
                stream.reconfigure(errors="surrogateescape")
        yield stream
        return
    output.parent.mkdir(parents=True, exist_ok=True)
    with open(output, "w", encoding="utf-8", errors="surrogateescape", newline="") as f:
        yield f


def print_tables(tables: Sequence, output: Path | None) -> None:
    """Render Rich tables for people, to stdout or a file (plain text there)."""
    from rich.console import Console

    with open_output(output) as stream:
        console = Console(file=stream, width=120 if output else None, no_color=output is not None)
        for table in tables:
            console.print(table)


# A JSON list of numbers, booleans or nulls as json.dumps(indent=2) spreads it, one item a line.
# Real line breaks never occur inside JSON strings, so this cannot touch string contents.
_SCALAR = r"(?:-?[0-9][0-9.eE+-]*|true|false|null)"
_SCALAR_LIST = re.compile(r"\[\n\s*" + _SCALAR + r"(?:,\n\s*" + _SCALAR + r")*\n\s*\]")


def write_json(document: Any, output: Path | None) -> None:
    """One indented JSON document; lists of numbers stay on one line, so grids read as grids."""
    text = json.dumps(document, indent=2)
    text = _SCALAR_LIST.sub(lambda m: "[" + ", ".join(x.strip() for x in m.group(0)[1:-1].split(",")) + "]", text)
    with open_output(output) as stream:
        stream.write(text + "\n")


def write_jsonl(records: Sequence[dict], output: Path | None) -> None:
    with open_output(output) as stream:
        for record in records:
            stream.write(json.dumps(record) + "\n")


def write_csv(header: Sequence[str], rows: Sequence[Sequence], output: Path | None) -> None:
    with open_output(output) as stream:
        writer = csv.writer(stream, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)


def finish(failed: int) -> None:
    """Exit 1 when some inputs failed (each was already named on stderr)."""
    if failed:
        raise typer.Exit(code=1)
