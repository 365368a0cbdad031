"""Turn a user's data spec into a sorted list of :class:`Sample` records.

A spec is one of:

- ``"demo"``: the built-in demo set (see :mod:`detailclip_cli.core.data.demo`).
- A folder of images with same-named ``.txt`` captions, searched recursively. When the images
  sit in sub-folders, the first sub-folder under the root is the label. ``<stem>.mask.png``
  beside an image is its segmentation mask.
- A folder of class sub-folders without captions: the caption is built from a template.
- A ``.csv`` / ``.tsv`` file with an image-path column and a caption column; relative paths are
  relative to the file's folder.

If a folder holds a sub-folder named after the requested split (``train/``, ``val/``), that
sub-folder is read instead, so one spec serves both splits.
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from detailclip_cli.errors import UsageError

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
MASK_SUFFIX = ".mask"
DEMO_SPLITS = ("train", "val")


class DataError(UsageError, ValueError):
    """Data that cannot be used; the message is one line for people."""


@dataclass(frozen=True)
class Sample:
    """One training or evaluation example.

    Attributes:
        image: path of the image file.
        caption: its caption (for class folders, built from the class template).
        label: class name, when known.
        mask: path of a per-pixel class map (0 = background, k + 1 = class k), when there is one.
    """

    image: Path
    caption: str
    label: str | None = None
    mask: Path | None = None


def read_samples(
    spec: str | Path,
    *,
    split: str = "train",
    image_column: str = "filepath",
    caption_column: str = "title",
    label_column: str | None = None,
    class_template: str = "a photo of a {}.",
) -> list[Sample]:
    """Read the samples a data spec names.

    Args:
        spec: ``"demo"``, a folder, or a ``.csv`` / ``.tsv`` file (see the module docstring).
        split: which split of the demo set, or of a folder with split sub-folders.
        image_column: CSV/TSV column holding image paths.
        caption_column: CSV/TSV column holding captions.
        label_column: optional CSV/TSV column holding class names.
        class_template: caption for class-folder images; ``{}`` becomes the class name
            (underscores read as spaces).

    Returns:
        Samples in a deterministic order (sorted by path for folders, file order for tables).

    Raises:
        DataError: the spec is missing, empty or malformed.
    """
    if str(spec) == "demo":
        return _read_folder(_demo_split(split), class_template=class_template)
    path = Path(spec).expanduser()
    if not path.exists():
        raise DataError(f"data path does not exist: {path}")
    if path.is_file():
        if path.suffix.lower() in (".csv", ".tsv"):
            return _read_table(
                path, image_column=image_column, caption_column=caption_column, label_column=label_column
            )
        raise DataError(f"unsupported data file {path} (expected a folder, a .csv or a .tsv)")
    return _read_folder(_split_folder(path, split), class_template=class_template)


def class_names(
    spec: str | Path,
    *,
    split: str = "train",
    image_column: str = "filepath",
    caption_column: str = "title",
    label_column: str | None = None,
) -> list[str]:
    """The class names of a data spec, in label order.

    Args:
        spec: as for :func:`read_samples`.
        split: as for :func:`read_samples`.
        image_column: as for :func:`read_samples`.
        caption_column: as for :func:`read_samples`.
        label_column: as for :func:`read_samples`.

    Returns:
        The demo set's ``classes.json`` order; the sorted sub-folder names of a class-folder
        tree; otherwise the sorted distinct labels (empty when there are none).
    """
    if str(spec) == "demo":
        from detailclip_cli.core.data.demo import demo_root

        return list(json.loads((demo_root() / "classes.json").read_text()))
    samples = read_samples(
        spec, split=split, image_column=image_column, caption_column=caption_column, label_column=label_column
    )
    return sorted({s.label for s in samples if s.label is not None})


def load_image(path: str | Path) -> Image.Image:
    """Open an image as 8-bit RGB, the way a camera or browser would show it.

    EXIF orientation is applied, palette and greyscale images are expanded, CMYK is converted,
    and transparency is composited over white.

    Args:
        path: image file.

    Returns:
        A loaded PIL image in mode ``"RGB"``.

    Raises:
        DataError: the file is missing or cannot be decoded.
    """
    path = Path(path)
    try:
        with Image.open(path) as im:
            im.load()
            im = ImageOps.exif_transpose(im)
            return _to_rgb(im)
    except FileNotFoundError:
        raise DataError(f"image file not found: {path}") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise DataError(f"cannot read image {path}: {e}") from None


def load_mask(path: str | Path) -> np.ndarray:
    """Open a per-pixel class map.

    Args:
        path: single-channel image (mode ``L``, ``P`` or 16-bit); pixel value = class id.

    Returns:
        ``(H, W)`` int64 array.

    Raises:
        DataError: the file cannot be read or has colour channels.
    """
    path = Path(path)
    try:
        with Image.open(path) as im:
            im.load()
            array = np.asarray(im)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise DataError(f"cannot read mask {path}: {e}") from None
    if array.ndim != 2:
        raise DataError(f"mask {path} must be single-channel (class ids), not {im.mode}")
    return array.astype(np.int64)


def is_image_file(path: Path) -> bool:
    """Whether ``path`` names an image (by extension, case-insensitive) that is not a mask."""
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.stem.endswith(MASK_SUFFIX)


def _to_rgb(im: Image.Image) -> Image.Image:
    if im.mode == "RGB":
        return im
    if im.mode == "P":
        # Palette images may carry transparency in their info block; expand it to an alpha band.
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    if im.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        # PIL's own conversion clips these to 255; stretch to the full 8-bit range instead.
        array = np.asarray(im, dtype=np.float64)
        top = array.max()
        array = array / top * 255.0 if top > 0 else array
        im = Image.fromarray(np.clip(np.rint(array), 0, 255).astype(np.uint8))
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        # Fully transparent pixels often hold arbitrary colours; white is what viewers show.
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return im.convert("RGB")


def _demo_split(split: str) -> Path:
    from detailclip_cli.core.data.demo import demo_root

    if split not in DEMO_SPLITS:
        raise DataError(f"the demo set has splits {', '.join(DEMO_SPLITS)}, not {split!r}")
    return demo_root() / split


def _split_folder(folder: Path, split: str) -> Path:
    candidate = folder / split
    return candidate if split and candidate.is_dir() else folder


def _walk_files(folder: Path) -> list[Path]:
    """Every non-hidden file under ``folder``, sorted."""
    files = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        files.extend(Path(dirpath) / f for f in filenames if not f.startswith("."))
    return sorted(files)


def _read_folder(folder: Path, *, class_template: str) -> list[Sample]:
    if not folder.is_dir():
        raise DataError(f"data folder does not exist: {folder}")
    files = _walk_files(folder)
    if not files:
        raise DataError(f"data folder is empty: {folder}")
    images = [f for f in files if is_image_file(f)]
    if not images:
        raise DataError(f"no images found in {folder} (looked for {', '.join(sorted(IMAGE_EXTENSIONS))})")
    present = set(files)

    def mask_of(image: Path) -> Path | None:
        mask = image.with_name(image.stem + MASK_SUFFIX + ".png")
        return mask if mask in present else None

    captioned = [im for im in images if im.with_suffix(".txt") in present]
    if captioned:
        missing = [im for im in images if im.with_suffix(".txt") not in present]
        if missing:
            raise DataError(
                f"{len(missing)} of {len(images)} images in {folder} have no .txt caption, e.g. {missing[0]}"
            )
        # Labels only when every image sits in a sub-folder: a few loose files in the root
        # would otherwise give half the set no label.
        in_subfolders = all(im.parent != folder for im in images)
        samples = []
        for im in images:
            caption = _read_caption(im.with_suffix(".txt"))
            label = im.relative_to(folder).parts[0] if in_subfolders else None
            samples.append(Sample(image=im, caption=caption, label=label, mask=mask_of(im)))
        return samples

    classes = sorted({im.relative_to(folder).parts[0] for im in images if im.parent != folder})
    if not classes:
        raise DataError(
            f"{folder} has images but neither .txt captions nor class sub-folders; "
            "add captions or sort the images into one folder per class"
        )
    loose = [im for im in images if im.parent == folder]
    if loose:
        raise DataError(f"{len(loose)} images in {folder} sit outside the class folders, e.g. {loose[0]}")
    return [
        Sample(
            image=im,
            caption=class_template.format(label.replace("_", " ")),
            label=label,
            mask=mask_of(im),
        )
        for im in images
        for label in [im.relative_to(folder).parts[0]]
    ]


def _read_caption(path: Path) -> str:
    text = path.read_text(encoding="utf-8", errors="replace")
    # Captions are one line; joining keeps a stray line break from splitting the text.
    caption = " ".join(text.split())
    if not caption:
        raise DataError(f"caption file is empty: {path}")
    return caption


def _detect_delimiter(path: Path, head: str) -> str:
    if path.suffix.lower() == ".tsv":
        return "\t"
    try:
        return csv.Sniffer().sniff(head, delimiters=",\t;|").delimiter
    except csv.Error:
        return ","


def _read_table(
    path: Path, *, image_column: str, caption_column: str, label_column: str | None
) -> list[Sample]:
    with open(path, newline="", encoding="utf-8-sig") as f:
        head = f.read(16384)
        if not head.strip():
            raise DataError(f"table is empty: {path}")
        f.seek(0)
        reader = csv.DictReader(f, delimiter=_detect_delimiter(path, head))
        columns = [c for c in (reader.fieldnames or [])]
        wanted = [image_column, caption_column] + ([label_column] if label_column else [])
        for column in wanted:
            if column not in columns:
                raise DataError(
                    f"column {column!r} not found in {path}; columns are: {', '.join(map(repr, columns))}"
                )
        samples = []
        for line, row in enumerate(reader, start=2):
            raw = (row[image_column] or "").strip()
            if not raw:
                raise DataError(f"{path} line {line}: empty {image_column!r}")
            image = Path(raw).expanduser()
            image = image if image.is_absolute() else path.parent / image
            caption = " ".join((row[caption_column] or "").split())
            label = None
            if label_column:
                label = (row[label_column] or "").strip() or None
            samples.append(Sample(image=image, caption=caption, label=label))
    if not samples:
        raise DataError(f"table has a header but no rows: {path}")
    missing = [s.image for s in samples if not s.image.is_file()]
    if missing:
        raise DataError(f"{len(missing)} images listed in {path} do not exist, e.g. {missing[0]}")
    return samples
