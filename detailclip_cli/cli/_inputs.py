"""Expand a command's ``IMAGES...`` arguments into image paths.

Each argument is a file (kept as given, even without an image extension, a broken link or a
pipe, so a bad file is reported rather than silently skipped), a folder (its image files, recursively, sorted, masks
``*.mask.png`` and hidden entries skipped), a glob (``'imgs/*.jpg'``, ``'**'`` recursive; image
files among the matches), or ``-`` (one path per line on stdin, each expanded the same way).
Order is preserved and repeats are dropped; arguments that match nothing are returned as missing,
folders given by name that hold no image as empty. Folders are walked following symbolic links,
each real folder once, so a link loop cannot hang the walk or repeat its images.
"""

from __future__ import annotations

import glob
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

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
