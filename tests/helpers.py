"""Helpers shared by several test modules (``tests/`` is on pytest's ``pythonpath``)."""

from __future__ import annotations

import dataclasses
import io
import json
import os
import struct
import sys
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import open_clip
import pytest
from PIL import Image

from detailclip_cli.core.config import ModelConfig, load_preset

# A tiny open_clip architecture (the image and text towers of ViT-B/16 in miniature).
TINY = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "head_width": 32, "patch_size": 8},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}


def small_model_cfg(**changes) -> ModelConfig:
    """The tiny preset shrunk further for speed: 64 px / 8 px patches, depth 2, width 48."""
    model, _ = load_preset("tiny")
    r = dataclasses.replace
    model = r(
        model,
        embed_dim=32,
        vision=r(model.vision, width=48, depth=2, heads=3),
        text=r(model.text, vocab_size=500, context_length=8, width=32, heads=2, layers=1),
        decoder=r(model.decoder, width=32, heads=2),
        head=r(model.head, out_dim=64, hidden_dim=64, bottleneck_dim=32),
    )
    return r(model, **changes)


def cli(monkeypatch, capsys, *args) -> tuple[int, str]:
    """Run the console entry point in-process: (exit code, stderr)."""
    # Imported here so that the core's tests, which share this module, never need the CLI.
    from detailclip_cli.cli import main

    monkeypatch.setattr(sys, "argv", ["detailclip", *map(str, args)])
    with pytest.raises(SystemExit) as info:
        main()
    return info.value.code, capsys.readouterr().err


def register(tmp_path, name: str, **changes) -> str:
    """Register a tiny open_clip architecture under ``name`` (the registry is global, names are unique)."""
    cfg = json.loads(json.dumps(TINY))
    for key, value in changes.items():
        if key in ("vision_cfg", "text_cfg"):
            cfg[key].update(value)
        else:
            cfg[key] = value
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(cfg))
    open_clip.add_model_config(path)
    return name


# ---------------------------------------------------------------- a corpus of good and broken image files


@dataclass
class Corpus:
    """Files of every kind, each named after its kind.

    Attributes:
        good: kind -> a file ``load_image`` must read.
        bad: kind -> a file ``load_image`` must refuse with a one-line ``DataError``.
        size: kind -> the (width, height) a good file loads as.
        reason: kind -> a word the refusal of a bad file must contain.
    """

    root: Path
    good: dict[str, Path] = field(default_factory=dict)
    bad: dict[str, Path] = field(default_factory=dict)
    size: dict[str, tuple[int, int]] = field(default_factory=dict)
    reason: dict[str, str] = field(default_factory=dict)

    @property
    def kinds(self) -> int:
        return len(self.good) + len(self.bad)


GOOD_KINDS = 16
BAD_KINDS = 13


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def _jpeg_bytes(image: Image.Image, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", **kwargs)
    return buffer.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def claimed_png(width: int, height: int) -> bytes:
    """A PNG of a few dozen bytes whose header claims ``width`` x ``height`` RGB pixels."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(b""))
            + _chunk(b"IEND", b""))


def build_corpus(root: Path) -> Corpus:
    """Write every kind of good and broken image file into ``root`` (all tiny)."""
    root.mkdir(parents=True, exist_ok=True)
    corpus = Corpus(root)

    def good(kind: str, name: str | bytes, data: bytes, size: tuple[int, int]) -> None:
        path = Path(os.fsdecode(os.path.join(os.fsencode(root), os.fsencode(name))))
        path.write_bytes(data)
        corpus.good[kind], corpus.size[kind] = path, size

    def bad(kind: str, name: str, data: bytes | None, reason: str) -> None:
        path = root / name
        if data is not None:
            path.write_bytes(data)
        corpus.bad[kind], corpus.reason[kind] = path, reason

    rgb = Image.new("RGB", (24, 16), (200, 30, 30))
    good("png_named_jpg", "png-named.jpg", png_bytes(rgb), (24, 16))
    good("tiny_1x1", "one-pixel.png", png_bytes(Image.new("RGB", (1, 1), (9, 9, 9))), (1, 1))
    good("tall_1x500", "tall.png", png_bytes(Image.new("RGB", (1, 500), (0, 90, 0))), (1, 500))
    good("wide_500x1", "wide.png", png_bytes(Image.new("RGB", (500, 1), (0, 0, 90))), (500, 1))
    good("mode_1", "bilevel.png", png_bytes(Image.new("1", (12, 10), 1)), (12, 10))
    good("mode_L", "grey.png", png_bytes(Image.new("L", (12, 10), 77)), (12, 10))
    good("mode_LA", "grey-alpha.png", png_bytes(Image.new("LA", (12, 10), (100, 255))), (12, 10))
    palette = Image.new("P", (12, 10), 0)
    palette.putpalette([0, 0, 0, 250, 0, 0] + [0] * 762)
    palette.paste(1, (0, 0, 6, 10))  # left half opaque red, right half index 0: transparent
    buffer = io.BytesIO()
    palette.save(buffer, "PNG", transparency=0)
    good("mode_P_transparent", "palette.png", buffer.getvalue(), (12, 10))
    good("mode_CMYK", "cmyk.jpg", _jpeg_bytes(Image.new("CMYK", (12, 10), (0, 255, 255, 0))), (12, 10))
    good("mode_I16", "sixteen.png", png_bytes(Image.fromarray(np.full((10, 12), 4000, np.uint16))), (12, 10))
    buffer = io.BytesIO()
    Image.fromarray(np.linspace(0, 1, 120, dtype=np.float32).reshape(10, 12)).save(buffer, "TIFF")
    good("mode_F", "float.tif", buffer.getvalue(), (12, 10))
    good("mode_RGBA", "rgba.png", png_bytes(Image.new("RGBA", (12, 10), (10, 20, 30, 0))), (12, 10))
    frames = [Image.new("RGB", (12, 10), colour) for colour in [(255, 0, 0), (0, 0, 255)]]
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    good("animated_gif", "animated.gif", buffer.getvalue(), (12, 10))
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    halves = Image.new("RGB", (30, 20), (0, 0, 255))
    halves.paste((255, 0, 0), (0, 0, 15, 20))  # left half red: the top once rotated
    good("exif_rotated", "rotated.jpg", _jpeg_bytes(halves, exif=exif, quality=95), (20, 30))
    good("name_with_newline", "new\nline.png", png_bytes(rgb), (24, 16))
    good("name_not_utf8", b"caf\xe9.png", png_bytes(rgb), (24, 16))

    png, jpeg = png_bytes(Image.new("RGB", (32, 32), (5, 200, 5))), _jpeg_bytes(Image.new("RGB", (32, 32)))
    bad("zero_bytes", "empty.png", b"", "empty")
    bad("truncated_png", "truncated.png", png[: len(png) // 2], "truncated")
    bad("truncated_jpeg", "truncated.jpg", jpeg[: len(jpeg) // 2], "runcated")
    bad("header_only_png", "header-only.png", png[:24], "runcated")
    corrupt = bytearray(png)
    start = corrupt.index(b"IDAT") + 4
    corrupt[start:start + 12] = b"\xff" * 12
    bad("corrupt_png_data", "corrupt.png", bytes(corrupt), "cannot read")
    bad("text_named_jpg", "notes.jpg", b"this is not a picture\n", "not an image")
    bad("zero_width_png", "zero-width.png", claimed_png(0, 10), "cannot read")
    bad("bomb_over_2x_limit", "bomb.png", claimed_png(20000, 20000), "limit")
    bad("bomb_between_1x_2x", "bomb-warning.png", claimed_png(10000, 10000), "limit")
    bad("directory_named_png", "folder.png", None, "directory")
    (root / "folder.png").mkdir()
    bad("dangling_link", "dangling.png", None, "not found")
    os.symlink(root / "nowhere.png", root / "dangling.png")
    bad("link_to_itself", "self-link.png", None, "symbolic links")
    os.symlink("self-link.png", root / "self-link.png")
    bad("named_pipe", "pipe.png", None, "not a regular file")  # opening it to read would wait forever
    os.mkfifo(root / "pipe.png")

    assert (len(corpus.good), len(corpus.bad)) == (GOOD_KINDS, BAD_KINDS)
    return corpus
