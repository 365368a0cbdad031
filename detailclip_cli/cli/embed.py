"""``detailclip embed``: images and texts to embeddings in a file, for search and clustering."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from detailclip_cli.cli import options as opts
from detailclip_cli.cli.console import err_console, one_line, say, stage_progress
from detailclip_cli.cli.inputs import gather_images, load_model
from detailclip_cli.cli.output import finish
from detailclip_cli.core.choices import EmbedWhich, one_of
from detailclip_cli.errors import UsageError


def embed(
    images: opts.ImagesArg = None,
    texts: Annotated[Optional[Path], typer.Option(
        "--texts", metavar="FILE", rich_help_panel=opts.DATA, show_default=False,
        help="A UTF-8 file of texts, one per line (blank lines skipped), or - for stdin.")] = None,
    text: Annotated[Optional[list[str]], typer.Option(
        "--text", "-t", metavar="TEXT", rich_help_panel=opts.DATA, show_default=False,
        help="A text to embed (repeat the option for more).")] = None,
    which: Annotated[Optional[str], typer.Option(
        "--which", metavar="KIND", rich_help_panel=opts.OUTPUT, show_default=False,
        help=f"What to write: {one_of(EmbedWhich)} (default: image for images, text for texts; patch: each "
        "image's patch tokens, for dense work).")] = None,
    output: Annotated[Optional[Path], typer.Option(
        "--output", "-o", metavar="FILE", rich_help_panel=opts.OUTPUT, show_default=False,
        help="FILE.safetensors (embeddings + ids), FILE.npy (+ FILE.ids.txt), FILE.parquet (needs pyarrow) or "
        "FILE.jsonl; - or none: JSON lines on stdout. A file is written in chunks and a rerun resumes.")] = None,
    model: opts.ModelOpt = None,
    pretrained: opts.PretrainedOpt = None,
    batch_size: opts.BatchSizeOpt = 64,
    workers: opts.EncodeWorkersOpt = None,
    chunk_size: Annotated[int, typer.Option(
        "--chunk-size", metavar="N", min=1, rich_help_panel=opts.OUTPUT,
        help="Rows per resumable chunk of an output file.")] = 4096,
    device: opts.DeviceOpt = "auto",
    no_verify: opts.NoVerifyOpt = False,
) -> None:
    """Embed images and texts: L2-normalised vectors from the model's two towers.

    Images (files, folders, globs, tar shards, or - for paths on stdin) go through the image
    tower, texts (--texts FILE, --text) through the text tower; each row keeps an id (the
    path as given, shard.tar/member, or the text). Unreadable images are named on stderr and
    skipped (exit 1 at the end). An output file is written in chunks beside it (FILE.parts/):
    a rerun after a kill skips the finished chunks.

    [bold]Examples[/bold]

      detailclip embed photos/ --output photos.safetensors

      find imgs -name '*.jpg' | detailclip embed - --output imgs.npy --workers 4

      detailclip embed --texts captions.txt --output captions.safetensors

      detailclip embed a.jpg --text "a red circle" | jq -c '[.id, .embedding[:3]]'
    """
    console = err_console()
    # imported on use, not at the top: --help must not load torch (start-up time)
    from detailclip_cli.core.data import DataError
    from detailclip_cli.core.use.batching import default_workers, image_sources
    from detailclip_cli.core.use.embfile import check_output, embed_to_file

    kind = _which(which, has_images=bool(images), has_texts=bool(texts or text))
    out_file = None if output is None or str(output) == "-" else output
    check_output(out_file)
    text_list = [*(read_texts(texts) if texts is not None else []), *(text or [])]
    paths, failed = gather_images(images, console) if images else ([], 0)
    try:
        sources = image_sources(paths)
    except DataError as exc:
        raise UsageError(str(exc)) from None
    if not sources and not text_list:
        finish(failed or 1)
        return

    net = load_model(model, pretrained, device, console, verify=not no_verify)
    n = len(sources) + len(text_list)
    workers = default_workers(len(sources), device=net.logit_scale.device) if workers is None else workers

    def on_error(name: str, message: str) -> None:
        say(console, f"error: {one_line(' '.join(message.split()))}")

    with stage_progress(console) as progress:
        report = embed_to_file(
            net, images=sources, texts=text_list, which=kind, output=out_file, batch_size=batch_size,
            workers=workers, chunk_size=chunk_size, model_spec=model, on_rows=progress("embed", n),
            on_error=on_error,
        )
    if out_file is not None:
        resumed = f", {report.skipped_chunks} chunks from an earlier run" if report.skipped_chunks else ""
        say(console, f"{report.rows} embeddings -> {out_file}{resumed}")
    finish(failed + len(report.failed))


def _which(which: str | None, *, has_images: bool, has_texts: bool) -> str:
    """What the images become (texts are always text rows), checked against what was given."""
    if not has_images and not has_texts:
        raise UsageError("give images (files, folders, globs, tar shards, or -) or --texts FILE / --text TEXT")
    if which is None:
        return EmbedWhich.image.value if has_images else EmbedWhich.text.value
    if which not in tuple(EmbedWhich):
        raise UsageError(f"--which must be {one_of(EmbedWhich)}, not {which!r}")
    if which == EmbedWhich.text and has_images:
        raise UsageError("--which text embeds texts only: give --texts/--text, not images")
    if which in (EmbedWhich.image, EmbedWhich.patch) and not has_images:
        raise UsageError(f"--which {which} needs images")
    if which == EmbedWhich.patch and has_texts:
        raise UsageError("--which patch writes image patch tokens: give texts in a separate run")
    return which


def read_texts(path: Path) -> list[str]:
    """One text per line from a file (or stdin for -), blank lines dropped."""
    import sys

    try:
        content = sys.stdin.read() if str(path) == "-" else path.read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"cannot read --texts {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise UsageError(f"--texts {path} is not UTF-8 text (one text per line)") from None
    lines = [line.strip() for line in content.splitlines()]
    if not any(lines):
        raise UsageError(f"--texts {path} holds no text")
    return [line for line in lines if line]
