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

Bad entries do not abort a whole data set. Captions are cleaned (:func:`clean_caption`); a
sample whose caption is empty afterwards is skipped, a table row naming no existing image is
skipped, and an exact repeat of an earlier table row is dropped. What was skipped or repaired
is counted in the :class:`ReadReport` on the returned list's ``report`` attribute. Only a data
set with nothing usable left is an error. Folders are walked following symbolic links, each
real folder once, so a link loop ends the walk instead of hanging it.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import re
import stat
import unicodedata
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from detailclip_cli.errors import UsageError

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
MASK_SUFFIX = ".mask"
DEMO_SPLITS = ("train", "val")


class DataError(UsageError, ValueError):
    """Data that cannot be used; the message is one line for people."""


@dataclass
class ReadReport:
    """What reading a data set skipped or repaired; every count is a number of samples or rows.

    Attributes:
        samples: samples returned.
        empty_captions: skipped, their caption was empty or only whitespace (after cleaning).
        unreadable_captions: skipped, their ``.txt`` caption file could not be read.
        invalid_utf8: kept, their caption held bytes that are not UTF-8 (each became U+FFFD).
        control_chars: kept, their caption held control characters (each became a space).
        missing_images: skipped, a table row with an empty image cell or a path to no file.
        duplicates: dropped, a table row repeating an earlier row's image, caption and label
            (the same image with another caption is kept, as in COCO's five captions an image).
        truncated_captions: captions whose tokens fill the whole text context, so any longer
            text was cut; counted by ``TwoViewDataset.data_report`` (the reader has no tokenizer).
        examples: for each count above that is not zero, where its first case is (one line).
    """

    samples: int = 0
    empty_captions: int = 0
    unreadable_captions: int = 0
    invalid_utf8: int = 0
    control_chars: int = 0
    missing_images: int = 0
    duplicates: int = 0
    truncated_captions: int = 0
    examples: dict[str, str] = field(default_factory=dict)

    def note(self, kind: str, example: str) -> None:
        """Count one case of ``kind`` (a count attribute); the first one becomes its example."""
        setattr(self, kind, getattr(self, kind) + 1)
        self.examples.setdefault(kind, example)

    def counts(self) -> dict[str, int]:
        """Every count by name, ``samples`` first: ready for a metrics line."""
        return {k: v for k, v in asdict(self).items() if k != "examples"}

    @property
    def skipped(self) -> int:
        """Samples or rows left out: empty or unreadable captions, missing images, duplicates."""
        return self.empty_captions + self.unreadable_captions + self.missing_images + self.duplicates

    def summary(self) -> str:
        """One line naming each non-zero count but ``samples``, e.g. ``2 empty_captions (e.g. a.txt)``;
        empty when nothing was skipped, repaired or truncated."""
        parts = [f"{n} {k}" + (f" (e.g. {self.examples[k]})" if k in self.examples else "")
                 for k, n in self.counts().items() if k != "samples" and n]
        return ", ".join(parts)


class SampleList(list):
    """A list of :class:`Sample` that also carries the :class:`ReadReport` of the read that made it.

    It compares, iterates and slices as a plain list (slices are plain lists, without a report).

    Attributes:
        report: what was skipped or repaired while reading.
    """

    def __init__(self, samples: Iterable = (), report: ReadReport | None = None) -> None:
        super().__init__(samples)
        self.report = report if report is not None else ReadReport(samples=len(self))


class CleanCaption(NamedTuple):
    """A caption made safe to tokenise (see :func:`clean_caption`)."""

    text: str
    invalid_utf8: bool
    control_chars: bool


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
) -> SampleList:
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
        A :class:`SampleList` in a deterministic order (sorted by path for folders, file order
        for tables); its ``report`` counts the samples skipped or repaired on the way.

    Raises:
        DataError: the spec is missing, empty or malformed, or no usable sample is left.
    """
    if str(spec) == "demo":
        return _read_folder(_demo_split(split), class_template=class_template)
    path = Path(spec).expanduser()
    if not path.exists():
        raise DataError(f"data path does not exist: {printable(path)}")
    if path.is_file():
        if path.suffix.lower() in (".csv", ".tsv"):
            return _read_table(
                path, image_column=image_column, caption_column=caption_column, label_column=label_column
            )
        raise DataError(f"unsupported data file {printable(path)} (expected a folder, a .csv or a .tsv)")
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
    transparency is composited over white, and an animated image gives its first frame. The
    format is read from the file's contents, not its extension.

    Images above Pillow's pixel limit (``PIL.Image.MAX_IMAGE_PIXELS``, about 89 megapixels
    unless changed) are refused before they are decoded, as possible decompression bombs; Pillow
    only warns between one and two times the limit, and here that is a refusal too.

    Args:
        path: image file.

    Returns:
        A loaded PIL image in mode ``"RGB"``, at least 1x1.

    Raises:
        DataError: the file is missing, too large, or cannot be decoded (one line naming it).
    """
    path = Path(path)
    shown = printable(path)
    problem = _not_a_file(path)
    if problem == "missing":
        raise DataError(f"image file not found: {shown}")
    if problem:
        raise DataError(f"cannot read image {shown}: {problem}")
    return _decode_image(path, shown, empty=lambda: _is_empty(path))


def decode_image(data: bytes, name: str) -> Image.Image:
    """:func:`load_image` for an image held in memory (a member of a tar shard).

    Args:
        data: the encoded image (JPEG, PNG, WebP ...), decoded with the same limits and
            conversions as a file.
        name: what messages call it, e.g. ``shard.tar:key.jpg``.

    Raises:
        DataError: the bytes are too large an image or cannot be decoded (one line naming ``name``).
    """
    return _decode_image(io.BytesIO(data), printable(name), empty=lambda: not data)


@contextlib.contextmanager
def _opened(source) -> Iterator[Image.Image]:
    """``Image.open`` and ``load``, with Pillow's decompression-bomb *warning* raised as an error
    too (the zone between 1x and 2x ``MAX_IMAGE_PIXELS`` that Pillow would decode)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with Image.open(source) as im:
            im.load()
            yield im


def _decode_image(source, shown: str, *, empty: Callable[[], bool]) -> Image.Image:
    """Decode an image file or file object as :func:`load_image` describes; ``shown`` names it."""
    try:
        with _opened(source) as im:
            im = _to_rgb(ImageOps.exif_transpose(im))
    except FileNotFoundError:
        raise DataError(f"image file not found: {shown}") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise DataError(
            f"image {shown} is larger than the limit of {Image.MAX_IMAGE_PIXELS} pixels "
            "(PIL.Image.MAX_IMAGE_PIXELS), refused as a possible decompression bomb"
        ) from None
    except UnidentifiedImageError:
        what = "an empty file" if empty() else "not an image format Pillow can decode"
        raise DataError(f"cannot read image {shown}: {what}") from None
    except OSError as e:
        raise DataError(f"cannot read image {shown}: {_one_line(e.strerror or e)}") from None
    except Exception as e:  # a corrupt file can trip any decoder; the caller needs one line
        raise DataError(f"cannot read image {shown}: {_one_line(e) or type(e).__name__}") from None
    if im.width < 1 or im.height < 1:
        raise DataError(f"cannot read image {shown}: it has no pixels ({im.width}x{im.height})")
    return im


def printable(path: str | Path) -> str:
    """``path`` for a one-line message: control characters (a newline in a file name) and lone
    surrogates (bytes of a file name that are not UTF-8) escaped as Python writes them."""
    text = str(path)
    if not any(unicodedata.category(c) in ("Cc", "Cs") for c in text):
        return text
    return "".join(c.encode("unicode_escape", "backslashreplace").decode("ascii")
                   if unicodedata.category(c) in ("Cc", "Cs") else c for c in text)


def _one_line(error: object) -> str:
    return printable(" ".join(str(error).split()))


def _not_a_file(path: Path) -> str | None:
    """None for a regular file (after links); else why not: ``"missing"`` or a few words.

    Checked before opening, since reading a named pipe found in a data folder would wait forever.
    """
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return "missing"
    except OSError as e:
        return _one_line(e.strerror or e)
    except ValueError:  # a NUL character, which no file name can hold
        return "not a possible file name"
    if stat.S_ISREG(mode):
        return None
    return "it is a directory" if stat.S_ISDIR(mode) else "not a regular file (a pipe, socket or device)"


def _is_empty(path: Path) -> bool:
    try:
        return path.stat().st_size == 0
    except OSError:
        return False


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
        with _opened(path) as im:
            array = np.asarray(im)
    except Exception as e:  # as in load_image: any decoder error becomes one line naming the file
        raise DataError(f"cannot read mask {printable(path)}: {_one_line(e) or type(e).__name__}") from None
    if array.ndim != 2:
        raise DataError(f"mask {printable(path)} must be single-channel (class ids), not {im.mode}")
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


def _read_folder(folder: Path, *, class_template: str) -> SampleList:
    if not folder.is_dir():
        raise DataError(f"data folder does not exist: {printable(folder)}")
    files = walk_files(folder)
    if not files:
        raise DataError(f"data folder is empty: {printable(folder)}")
    images = [f for f in files if is_image_file(f)]
    if not images:
        raise DataError(
            f"no images found in {printable(folder)} (looked for {', '.join(sorted(IMAGE_EXTENSIONS))})"
        )
    present = set(files)

    def mask_of(image: Path) -> Path | None:
        mask = image.with_name(image.stem + MASK_SUFFIX + ".png")
        return mask if mask in present else None

    captioned = [im for im in images if im.with_suffix(".txt") in present]
    if captioned:
        missing = [im for im in images if im.with_suffix(".txt") not in present]
        if missing:
            raise DataError(
                f"{len(missing)} of {len(images)} images in {printable(folder)} have no .txt caption, "
                f"e.g. {printable(missing[0])}"
            )
        # Labels only when every image sits in a sub-folder: a few loose files in the root
        # would otherwise give half the set no label.
        in_subfolders = all(im.parent != folder for im in images)
        report = ReadReport()
        samples = SampleList(report=report)
        for im in images:
            caption = _read_caption(im.with_suffix(".txt"), report)
            if caption is None:
                continue
            label = im.relative_to(folder).parts[0] if in_subfolders else None
            samples.append(Sample(image=im, caption=caption, label=label, mask=mask_of(im)))
        report.samples = len(samples)
        if not samples:
            raise DataError(f"no usable samples in {printable(folder)}: {report.summary()}")
        return samples

    classes = sorted({im.relative_to(folder).parts[0] for im in images if im.parent != folder})
    if not classes:
        raise DataError(
            f"{printable(folder)} has images but neither .txt captions nor class sub-folders; "
            "add captions or sort the images into one folder per class"
        )
    loose = [im for im in images if im.parent == folder]
    if loose:
        raise DataError(
            f"{len(loose)} images in {printable(folder)} sit outside the class folders, e.g. {printable(loose[0])}"
        )
    return SampleList(
        Sample(
            image=im,
            caption=class_template.format(label.replace("_", " ")),
            label=label,
            mask=mask_of(im),
        )
        for im in images
        for label in [im.relative_to(folder).parts[0]]
    )


# C0 and C1 control characters and DEL, but the tab and line breaks, which are plain whitespace.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
# Lone surrogates: what undecodable bytes become under errors="surrogateescape" (and never text).
_SURROGATE = re.compile(r"[\ud800-\udfff]")


def clean_caption(raw: str | bytes) -> CleanCaption:
    """One line of caption text, safe to tokenise, from a caption file's bytes or a table cell.

    Bytes are decoded as UTF-8 (a leading byte-order mark dropped). Bytes that are not UTF-8,
    and lone surrogates in text (what ``errors="surrogateescape"`` makes of such bytes), become
    U+FFFD. Control characters become spaces, and every run of whitespace (line breaks
    included) one space, trimmed. Everything else is kept as it is: any script, emoji with
    their joiners, combining and right-to-left marks.

    Args:
        raw: the caption as read.

    Returns:
        The text (``""`` when nothing but whitespace is left) and whether invalid UTF-8 or
        control characters (other than tab, CR and LF) were replaced.
    """
    invalid = False
    if isinstance(raw, bytes):
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError:
            text, invalid = raw.decode("utf-8-sig", errors="replace"), True
    else:
        text = raw
    text, n_surrogates = _SURROGATE.subn("\ufffd", text)
    text, n_controls = _CONTROL.subn(" ", text)
    return CleanCaption(" ".join(text.split()), invalid or n_surrogates > 0, n_controls > 0)


def _accept_caption(raw: str | bytes, where: str, report: ReadReport) -> str | None:
    """The cleaned caption, counted in ``report``; None (counted as empty) when nothing is left."""
    cleaned = clean_caption(raw)
    if not cleaned.text:
        report.note("empty_captions", where)
        return None
    if cleaned.invalid_utf8:
        report.note("invalid_utf8", where)
    if cleaned.control_chars:
        report.note("control_chars", where)
    return cleaned.text


def _read_caption(path: Path, report: ReadReport) -> str | None:
    problem = _not_a_file(path)
    if problem is None:
        try:
            raw = path.read_bytes()
        except OSError as e:
            problem = _one_line(e.strerror or e)
    if problem is not None:
        reason = "No such file or directory" if problem == "missing" else problem
        report.note("unreadable_captions", f"{printable(path)}: {reason}")
        return None
    return _accept_caption(raw, printable(path), report)


def _detect_delimiter(path: Path, head: str) -> str:
    if path.suffix.lower() == ".tsv":
        return "\t"
    try:
        return csv.Sniffer().sniff(head, delimiters=",\t;|").delimiter
    except Exception:  # the sniffer's guesswork can fail in more ways than csv.Error
        return ","


def _table_path(raw: str, base: Path) -> Path:
    """A table cell as a path; relative paths are relative to the table's folder."""
    image = Path(raw)
    if raw.startswith("~"):
        try:
            image = image.expanduser()
        except RuntimeError:  # ~user that does not exist: leave the name as it is
            pass
    return image if image.is_absolute() else base / image


def _list_columns(columns: list[str], limit: int = 20) -> str:
    shown = ", ".join(map(repr, columns[:limit]))
    return shown + (f", ... ({len(columns)} in all)" if len(columns) > limit else "")


def _read_table(
    path: Path, *, image_column: str, caption_column: str, label_column: str | None
) -> SampleList:
    shown = printable(path)
    report = ReadReport()
    samples = SampleList(report=report)
    seen: set[tuple[str, str, str | None]] = set()
    reader = None
    try:
        # surrogateescape: a stray non-UTF-8 byte costs one caption a U+FFFD (counted), not the
        # whole table, and a path cell keeps the exact bytes of a file name.
        with open(path, newline="", encoding="utf-8-sig", errors="surrogateescape") as f:
            head = f.read(16384)
            if not head.strip():
                raise DataError(f"table is empty: {shown}")
            f.seek(0)
            reader = csv.DictReader(f, delimiter=_detect_delimiter(path, head))
            columns = list(reader.fieldnames or [])
            wanted = [image_column, caption_column] + ([label_column] if label_column else [])
            for column in wanted:
                if column not in columns:
                    raise DataError(f"column {column!r} not found in {shown}; columns are: {_list_columns(columns)}")
            for row in reader:
                where = f"{shown} line {reader.line_num}"
                raw = (row.get(image_column) or "").strip()
                if not raw:
                    report.note("missing_images", f"{where}: empty {image_column!r}")
                    continue
                image = _table_path(raw, path.parent)
                if not image.is_file():
                    report.note("missing_images", f"{where}: {printable(image)}")
                    continue
                caption = _accept_caption(row.get(caption_column) or "", where, report)
                if caption is None:
                    continue
                label = None
                if label_column:
                    label = clean_caption(row.get(label_column) or "").text or None
                key = (os.path.normpath(image), caption, label)
                if key in seen:
                    report.note("duplicates", where)
                    continue
                seen.add(key)
                samples.append(Sample(image=image, caption=caption, label=label))
    except OSError as e:
        raise DataError(f"cannot read table {shown}: {_one_line(e.strerror or e)}") from None
    except csv.Error as e:
        line = f" line {reader.line_num}" if reader is not None else ""
        raise DataError(f"{shown}{line}: not a readable table ({_one_line(e)})") from None
    report.samples = len(samples)
    if not samples:
        if not report.skipped:
            raise DataError(f"table has a header but no rows: {shown}")
        hint = " (relative image paths are read from the table's folder)" if report.missing_images else ""
        raise DataError(f"no usable rows in {shown}: {report.summary()}{hint}")
    return samples
