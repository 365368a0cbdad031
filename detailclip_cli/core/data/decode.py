"""Decoding images and masks, from files or bytes, safely and the same way everywhere.

Every decode goes through one guarded open: Pillow's decompression-bomb *warning* is an error
here too, and any failure of a decoder becomes a one-line :class:`DataError` naming the file.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from detailclip_cli.core.data.samples import DataError, one_line, printable
from detailclip_cli.core.data.walk import not_a_file


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
    problem = not_a_file(path)
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
        raise DataError(f"cannot read mask {printable(path)}: {one_line(e) or type(e).__name__}") from None
    if array.ndim != 2:
        raise DataError(f"mask {printable(path)} must be single-channel (class ids), not {im.mode}")
    return array.astype(np.int64)


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
        raise DataError(f"cannot read image {shown}: {one_line(e.strerror or e)}") from None
    except Exception as e:  # a corrupt file can trip any decoder; the caller needs one line
        raise DataError(f"cannot read image {shown}: {one_line(e) or type(e).__name__}") from None
    if im.width < 1 or im.height < 1:
        raise DataError(f"cannot read image {shown}: it has no pixels ({im.width}x{im.height})")
    return im


def _is_empty(path: Path) -> bool:
    try:
        return path.stat().st_size == 0
    except OSError:
        return False


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
