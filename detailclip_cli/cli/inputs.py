"""What a command reads: its ``IMAGES...`` expanded into paths, those images fed in batches, and
the model it uses, each problem named on stderr in one line.

Each argument is a file (kept as given, even without an image extension, a broken link or a
pipe, so a bad file is reported rather than silently skipped), a folder (its image files, recursively, sorted, masks
``*.mask.png`` and hidden entries skipped), a glob (``'imgs/*.jpg'``, ``'**'`` recursive; image
files among the matches), or ``-`` (one path per line on stdin, each expanded the same way).
Order is preserved and repeats are dropped; arguments that match nothing are returned as missing,
folders given by name that hold no image as empty. Folders are walked following symbolic links,
each real folder once, so a link loop cannot hang the walk or repeat its images.
Nothing here imports torch at module level.
"""

from __future__ import annotations

import glob
import os
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from detailclip_cli.cli.console import one_line, say, stage_progress
from detailclip_cli.cli.output import finish
from detailclip_cli.core.choices import ScoreLayer
from detailclip_cli.errors import UsageError
from detailclip_cli.core.store.shipped import model_name

GLOB_CHARS = frozenset("*?[")


@dataclass
class Inputs:
    """Expanded inputs.

    Attributes:
        paths: image paths in input order, each once.
        missing: arguments that named no file, folder or glob match.
        empty: folder arguments with no image file inside.
    """

    paths: list[Path] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    empty: list[str] = field(default_factory=list)


def expand_inputs(args: list[str], *, stdin: TextIO | None = None) -> Inputs:
    """Expand files, folders, globs and ``-`` into a de-duplicated, ordered list of paths."""
    # imported on use, not at the top: the data layer (walk, samples) stays out of --help (~3 ms)
    from detailclip_cli.core.data import image_files, is_image_file

    out = Inputs()
    seen: set[Path] = set()

    def add(path: Path) -> None:
        key = _identity(path)
        if key not in seen:
            seen.add(key)
            out.paths.append(path)

    def expand(arg: str) -> None:
        path = _expanduser(arg)
        if path.is_dir():
            found = image_files(path)
            if not found:
                out.empty.append(arg)
            for image in found:
                add(image)
        elif path.exists() or path.is_symlink():
            add(path)  # a broken link or a pipe too: loading it says what is wrong
        elif GLOB_CHARS & set(arg):
            matches = sorted(glob.glob(os.path.expanduser(arg), recursive=True))
            found_any = False
            for match in map(Path, matches):
                if match.is_dir():
                    for found in image_files(match):
                        add(found)
                        found_any = True
                elif is_image_file(match):
                    add(match)
                    found_any = True
            if not found_any:
                out.missing.append(arg)
        else:
            out.missing.append(arg)

    for arg in args:
        if arg == "-":
            stream = stdin if stdin is not None else sys.stdin
            for line in stream:
                line = line.strip()
                if line:
                    expand(line)
        else:
            expand(arg)
    return out


def _identity(path: Path) -> Path:
    """The real path of ``path``, to spot repeats; for a link that loops, its folder's real path
    and its own name (kept, so loading it names the problem)."""
    for candidate in (path, path.parent):
        try:
            real = candidate.resolve()
        except (OSError, RuntimeError):
            continue
        return real if candidate is path else real / path.name
    return path.absolute()


def _expanduser(arg: str) -> Path:
    """``~`` expanded, or the argument as it is when that home is unknown."""
    try:
        return Path(arg).expanduser()
    except RuntimeError:
        return Path(arg)


# -- what a command reads ----------------------------------------------------------------------------


def gather_images(images: Sequence[str] | None, console) -> tuple[list[Path], int]:
    """Expand IMAGES...; name each argument that gave no image on stderr, one line each.

    Returns:
        (paths, number of arguments that failed: missing, or folders without images).
    """
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


def require_images(images: Sequence[str] | None, console) -> tuple[list[Path], int]:
    """:func:`gather_images` for a command that reads images only: with none found, it stops here
    with exit code 1 (each argument that gave none is already named on stderr).

    Returns:
        (paths, at least one; number of arguments that failed).
    """
    paths, failed = gather_images(images, console)
    if not paths:
        finish(failed)  # failed >= 1 here: gather_images counts "no images at all" as one
    return paths, failed


class ImageFeed:
    """Batches of loaded images on the model's device; each unreadable file is named on stderr.

    Iterate for ``ImageBatch`` records (each holds at least one image); afterwards ``failed``
    is the number of files that could not be read. With ``encode`` (an ``ImageEncoder``), each
    batch comes encoded, in ``outputs`` (on a CPU, by the workers: see ``iter_image_batches``).
    """

    def __init__(self, model, paths: list[Path], *, batch_size: int, console, description: str, workers: int = 0,
                 encode=None):
        self.model, self.paths, self.batch_size, self.workers = model, paths, batch_size, workers
        self.console, self.description, self.encode = console, description, encode
        self.failed = 0

    def __iter__(self) -> Iterator:
        # imported on use, not at the top: --help must not load torch (start-up time)
        from detailclip_cli.core.use.batching import (
            iter_image_batches,  # torch: only once images are read
        )

        v = self.model.cfg.vision
        device = self.model.logit_scale.device
        with stage_progress(self.console) as progress:
            advance = progress(self.description, len(self.paths)) or (lambda n: None)
            for batch in iter_image_batches(self.paths, image_size=v.image_size, mean=v.mean, std=v.std,
                                            batch_size=self.batch_size, workers=self.workers, encode=self.encode):
                for _, message in batch.errors:
                    say(self.console, f"error: {one_line(' '.join(message.split()))}")
                self.failed += len(batch.errors)
                if batch.images is not None:
                    batch.images = batch.images.to(device)
                if batch.paths:
                    yield batch
                advance(len(batch.paths) + len(batch.errors))


def load_model(spec: str | None, pretrained: str | None, device: str, console, *, verify: bool = True):
    """Resolve the model and say on stderr which one it is; ``verify`` checks its weights' SHA-256
    (``--no-verify`` turns it off)."""
    # torch and the core load only when a command runs, so --help stays fast
    from detailclip_cli.core.device import resolve_device
    from detailclip_cli.core.store.lookup import resolve_model

    model = resolve_model(spec, pretrained=pretrained, device=resolve_device(device), verify=verify)
    v = model.cfg.vision
    name = model_name(spec)
    extra = f" ({pretrained})" if pretrained else ""
    say(console, f"model {name}{extra}: ViT {v.depth}x{v.width}, {v.image_size} px, patch {v.patch_size}")
    return model


def run_defaults(spec: str | None, model, *, layer: str | None, block_size: int | None) -> tuple[Any, int]:
    """The score layer and block size to use: given values, else the run's, else mean / 2-or-1."""
    # imported on use, not at the top: --help must not load torch (start-up time)
    from detailclip_cli.core.store.lookup import (
        run_train_settings,  # torch: only when a command runs
    )
    # imported on use, not at the top: --help must not load torch (start-up time)
    from detailclip_cli.core.use.probes import check_layer, default_block_size

    settings = run_train_settings(spec) or {}
    if layer is None:
        layer = str(settings.get("score_layer", ScoreLayer.mean.value))
    if block_size is None:
        block_size = default_block_size(model, int(settings.get("block_size", 2)))
    return check_layer(model, layer), block_size


def load_probe_model(spec: str | None, pretrained: str | None, device: str, console, *, verify: bool,
                     layer: str | None, block_size: int | None, keep_ratio: float) -> tuple[Any, Any, int]:
    """The model a probe (attn-map, reconstruct) looks into, said on stderr (:func:`load_model`),
    with the score layer and block size to use (:func:`run_defaults`), checked against it and
    ``keep_ratio`` before any image is read.

    Returns:
        (model, layer, block_size).
    """
    # imported on use, not at the top: --help must not load torch (start-up time)
    from detailclip_cli.core.use.probes import check_removal

    model = load_model(spec, pretrained, device, console, verify=verify)
    layer, block_size = run_defaults(spec, model, layer=layer, block_size=block_size)
    check_removal(model, keep_ratio, block_size)
    return model, layer, block_size
