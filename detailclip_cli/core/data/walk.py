"""Finding files: walking data folders, telling images from other files, and checking that a
path is a regular file before anything opens it.

Folders are walked following symbolic links, each real folder once, so a link loop ends the
walk instead of hanging it.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from detailclip_cli.core.data.samples import one_line

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
# <stem>.mask.png beside an image is its segmentation mask.
MASK_SUFFIX = ".mask"


def is_image_file(path: Path) -> bool:
    """Whether ``path`` names an image (by extension, case-insensitive) that is not a mask."""
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.stem.endswith(MASK_SUFFIX)


def walk_files(folder: str | Path) -> list[Path]:
    """Every non-hidden file under ``folder``, sorted, following symbolic links.

    Each real folder is entered once (told apart by device and inode), so a link back up the
    tree (``folder/loop -> folder``) or to a folder already walked adds nothing, instead of
    repeating the tree until the path grows too long. Sub-folders that cannot be read are
    passed over.
    """
    files: list[Path] = []
    entered: set[tuple[int, int]] = set()
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        try:
            st = os.stat(dirpath)
        except OSError:
            dirnames[:] = []
            continue
        if (st.st_dev, st.st_ino) in entered:
            dirnames[:] = []  # reached again through a link: its files are already listed
            continue
        entered.add((st.st_dev, st.st_ino))
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        files.extend(Path(dirpath) / f for f in filenames if not f.startswith("."))
    return sorted(files)


def image_files(folder: str | Path) -> list[Path]:
    """The image files among :func:`walk_files` (by extension; masks are images too here)."""
    return [f for f in walk_files(folder) if is_image_file(f)]


def split_folder(folder: Path, split: str) -> Path:
    """``folder/split`` when it is a folder (one spec serves both splits), else ``folder``."""
    candidate = folder / split
    return candidate if split and candidate.is_dir() else folder


def not_a_file(path: Path) -> str | None:
    """None for a regular file (after links); else why not: ``"missing"`` or a few words.

    Checked before opening, since reading a named pipe found in a data folder would wait forever.
    """
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return "missing"
    except OSError as e:
        return one_line(e.strerror or e)
    except ValueError:  # a NUL character, which no file name can hold
        return "not a possible file name"
    if stat.S_ISREG(mode):
        return None
    return "it is a directory" if stat.S_ISDIR(mode) else "not a regular file (a pipe, socket or device)"
