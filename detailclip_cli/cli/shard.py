"""``detailclip shard``: write training data as webdataset tar shards."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from detailclip_cli.cli.console import err_console, one_line, progress_bar, say
from detailclip_cli.errors import WorkFailedError


def shard(
    data: Annotated[str, typer.Option("--data", help="What to shard: 'demo', a folder (images + .txt captions, or class sub-folders), or a CSV/TSV file.", show_default=False)],
    out: Annotated[Path, typer.Option("--out", help="Folder for the shards (created; must be empty unless --force).", show_default=False)],
    samples_per_shard: Annotated[int, typer.Option("--samples-per-shard", min=1, help="Samples in each shard but the last.")] = 1000,
    split: Annotated[str, typer.Option("--split", help="Which split of 'demo', or of a folder with split sub-folders.")] = "train",
    force: Annotated[bool, typer.Option("--force", help="Replace the shards (NNNNNN.tar, shards.json) already in --out; other files there are kept.")] = False,
) -> None:
    """Write image-caption data as webdataset tar shards 000000.tar, 000001.tar, ... for fast streaming.

    Each sample is an image (its original bytes when JPEG, PNG or WebP; other formats as
    lossless PNG), its caption as .txt, and its class label as .json when the data has one;
    shards.json records each shard's size and sample count. Each shard is written under a
    temporary name and renamed when complete, so a crash never leaves half a shard. Images
    that cannot be read are left out, each named on stderr (exit code 1).

    [bold]Examples[/bold]

      detailclip shard --data ./imgs --out shards --samples-per-shard 5000

      detailclip pretrain --data 'shards/{000000..000009}.tar' --samples-per-epoch 100000
    """
    # imported on use, not at the top: --help must not load torch (start-up time)
    from detailclip_cli.core.data import read_samples, write_shards

    console = err_console()
    samples = read_samples(data, split=split)
    report = samples.report
    if report.summary():
        say(console, f"data: {report.samples} samples; {report.summary()}", style="yellow")
    with progress_bar(console, len(samples), "shard") as advance:
        def progress(done: int, problem: str | None) -> None:
            if problem:
                say(console, f"error: {one_line(problem)}")
            advance(1)

        summary = write_shards(samples, out, samples_per_shard=samples_per_shard, force=force, progress=progress)
    skipped = len(summary.skipped)
    say(console, f"done: {len(summary.shards)} shards, {summary.samples} samples, "
                 f"{summary.bytes / 2**20:.1f} MiB in {one_line(out)}"
                 + (f"; {skipped} unreadable images skipped" if skipped else ""))
    if skipped:
        raise WorkFailedError(f"{skipped} of {len(samples)} images could not be read (named above)")
