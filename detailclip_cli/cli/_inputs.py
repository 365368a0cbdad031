"""Expand a command's ``IMAGES...`` arguments into image paths.

Each argument is a file (kept as given, even without an image extension, so a bad file is
reported rather than silently skipped), a folder (its image files, recursively, sorted, masks
``*.mask.png`` and hidden entries skipped), a glob (``'imgs/*.jpg'``, ``'**'`` recursive; image
files among the matches), or ``-`` (one path per line on stdin, each expanded the same way).
Order is preserved and repeats are dropped; arguments that match nothing are returned as missing.
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
    """

    paths: list[Path] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)


def expand_inputs(args: list[str], *, stdin: TextIO | None = None) -> Inputs:
    """Expand files, folders, globs and ``-`` into a de-duplicated, ordered list of paths."""
    from detailclip_cli.core.data import is_image_file

    out = Inputs()
    seen: set[Path] = set()

    def add(path: Path) -> None:
        key = path.resolve()
        if key not in seen:
            seen.add(key)
            out.paths.append(path)

    def expand(arg: str) -> None:
        path = Path(arg).expanduser()
        if path.is_dir():
            for found in _walk_images(path, is_image_file):
                add(found)
        elif path.is_file():
            add(path)
        elif GLOB_CHARS & set(arg):
            matches = sorted(glob.glob(os.path.expanduser(arg), recursive=True))
            found_any = False
            for match in map(Path, matches):
                if match.is_dir():
                    for found in _walk_images(match, is_image_file):
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


def _walk_images(folder: Path, is_image_file) -> list[Path]:
    """Image files under ``folder``, recursively, sorted; hidden files and folders skipped."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found.extend(Path(dirpath) / f for f in filenames if not f.startswith("."))
    return sorted(p for p in found if is_image_file(p))
