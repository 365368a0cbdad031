"""Broken and unusual inputs: each good one is read, each bad one is named in one line, nothing crashes.

A generated corpus of tiny files (:func:`build_corpus`) goes through the image loader, the
training and evaluation datasets, and the ``zero-shot``, ``attn-map`` and ``reconstruct``
commands; captions, tables and folders get their own broken cases, and hypothesis throws
arbitrary text and bytes at the caption and table readers.
"""

from __future__ import annotations

import csv
import io
import json
import os
import struct
import tempfile
import time
import unicodedata
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from torchvision import tv_tensors
from typer.testing import CliRunner

from detailclip_cli.cli import app
from detailclip_cli.cli._inputs import expand_inputs
from detailclip_cli.core.data import (
    AugmentConfig,
    DataError,
    EvalDataset,
    Sample,
    TwoViewDataset,
    collate_skipping_bad,
    load_image,
    make_eval_geometry,
    read_samples,
)
from detailclip_cli.core.data.dataset import truncated_captions
from detailclip_cli.core.data.readers import ReadReport, SampleList, clean_caption, walk_files

MEAN = (0.5, 0.5, 0.5)
STD = (0.25, 0.25, 0.25)
SHIPPED_MODEL = Path(__file__).resolve().parents[2] / "assets" / "detailclip-tiny"
HYPOTHESIS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# ---------------------------------------------------------------- the corpus


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


def _png_bytes(image: Image.Image) -> bytes:
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
    good("png_named_jpg", "png-named.jpg", _png_bytes(rgb), (24, 16))
    good("tiny_1x1", "one-pixel.png", _png_bytes(Image.new("RGB", (1, 1), (9, 9, 9))), (1, 1))
    good("tall_1x500", "tall.png", _png_bytes(Image.new("RGB", (1, 500), (0, 90, 0))), (1, 500))
    good("wide_500x1", "wide.png", _png_bytes(Image.new("RGB", (500, 1), (0, 0, 90))), (500, 1))
    good("mode_1", "bilevel.png", _png_bytes(Image.new("1", (12, 10), 1)), (12, 10))
    good("mode_L", "grey.png", _png_bytes(Image.new("L", (12, 10), 77)), (12, 10))
    good("mode_LA", "grey-alpha.png", _png_bytes(Image.new("LA", (12, 10), (100, 255))), (12, 10))
    palette = Image.new("P", (12, 10), 0)
    palette.putpalette([0, 0, 0, 250, 0, 0] + [0] * 762)
    palette.paste(1, (0, 0, 6, 10))  # left half opaque red, right half index 0: transparent
    buffer = io.BytesIO()
    palette.save(buffer, "PNG", transparency=0)
    good("mode_P_transparent", "palette.png", buffer.getvalue(), (12, 10))
    good("mode_CMYK", "cmyk.jpg", _jpeg_bytes(Image.new("CMYK", (12, 10), (0, 255, 255, 0))), (12, 10))
    good("mode_I16", "sixteen.png", _png_bytes(Image.fromarray(np.full((10, 12), 4000, np.uint16))), (12, 10))
    buffer = io.BytesIO()
    Image.fromarray(np.linspace(0, 1, 120, dtype=np.float32).reshape(10, 12)).save(buffer, "TIFF")
    good("mode_F", "float.tif", buffer.getvalue(), (12, 10))
    good("mode_RGBA", "rgba.png", _png_bytes(Image.new("RGBA", (12, 10), (10, 20, 30, 0))), (12, 10))
    frames = [Image.new("RGB", (12, 10), colour) for colour in [(255, 0, 0), (0, 0, 255)]]
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    good("animated_gif", "animated.gif", buffer.getvalue(), (12, 10))
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    halves = Image.new("RGB", (30, 20), (0, 0, 255))
    halves.paste((255, 0, 0), (0, 0, 15, 20))  # left half red: the top once rotated
    good("exif_rotated", "rotated.jpg", _jpeg_bytes(halves, exif=exif, quality=95), (20, 30))
    good("name_with_newline", "new\nline.png", _png_bytes(rgb), (24, 16))
    good("name_not_utf8", b"caf\xe9.png", _png_bytes(rgb), (24, 16))

    png, jpeg = _png_bytes(Image.new("RGB", (32, 32), (5, 200, 5))), _jpeg_bytes(Image.new("RGB", (32, 32)))
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


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Corpus:
    return build_corpus(tmp_path_factory.mktemp("corpus"))


def test_corpus_has_every_kind(corpus):
    assert corpus.kinds == GOOD_KINDS + BAD_KINDS == 29
    assert sum(os.path.getsize(p) for p in corpus.good.values()) < 20_000  # tiny, so the tests are fast


# ---------------------------------------------------------------- load_image


def _kinds() -> tuple[list[str], list[str]]:
    with tempfile.TemporaryDirectory() as tmp:
        corpus = build_corpus(Path(tmp))
        return sorted(corpus.good), sorted(corpus.bad)


GOOD, BAD = _kinds()


@pytest.mark.parametrize("kind", GOOD)
def test_good_files_load_as_rgb(corpus, kind):
    image = load_image(corpus.good[kind])
    assert image.mode == "RGB"
    assert image.size == corpus.size[kind]


def test_pixels_of_the_unusual_modes(corpus):
    def at(kind, xy):
        return load_image(corpus.good[kind]).getpixel(xy)

    assert at("mode_RGBA", (0, 0)) == (255, 255, 255)  # transparent shows as white
    assert at("mode_LA", (0, 0)) == (100, 100, 100)
    assert at("mode_P_transparent", (0, 0)) == (250, 0, 0)
    assert at("mode_P_transparent", (11, 0)) == (255, 255, 255)
    assert at("animated_gif", (0, 0)) == (255, 0, 0)  # the first frame
    red, _, blue = at("mode_CMYK", (5, 5))
    assert red > 200 and blue < 60
    assert at("mode_I16", (0, 0)) == (255, 255, 255)  # stretched to the 8-bit range, not clipped
    top, bottom = at("exif_rotated", (10, 2)), at("exif_rotated", (10, 27))
    assert top[0] > 200 > top[2] and bottom[2] > 200 > bottom[0]  # rotated clockwise: left became top


@pytest.mark.parametrize("kind", BAD)
def test_bad_files_are_one_line_errors_naming_the_file(corpus, kind):
    path = corpus.bad[kind]
    with pytest.raises(DataError) as info:
        load_image(path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    assert corpus.reason[kind] in message


def test_pixel_limit_refuses_the_warning_zone_too(tmp_path, monkeypatch):
    """Pillow raises above 2x MAX_IMAGE_PIXELS but only warns between 1x and 2x: both are refused."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    sizes = {"under": (30, 30), "warning": (40, 40), "error": (50, 50)}
    paths = {}
    for name, size in sizes.items():
        paths[name] = tmp_path / f"{name}.png"
        Image.new("RGB", size).save(paths[name])
    assert load_image(paths["under"]).size == (30, 30)
    for name in ("warning", "error"):
        with pytest.raises(DataError, match=rf"{name}\.png .*limit of 1000 pixels") as info:
            load_image(paths[name])
        assert "\n" not in str(info.value)


def test_file_names_in_messages_stay_on_one_line(tmp_path):
    path = tmp_path / "two\nlines.png"
    path.write_bytes(b"nope")
    with pytest.raises(DataError) as info:
        load_image(path)
    assert "\n" not in str(info.value) and "two\\nlines.png" in str(info.value)
    with pytest.raises(DataError, match="not a possible file name"):
        load_image(tmp_path / "nul\x00.png")


# ---------------------------------------------------------------- transforms and datasets


def _samples(paths) -> list[Sample]:
    return [Sample(image=p, caption="a picture") for p in paths]


def test_training_views_of_every_good_file(corpus):
    ds = TwoViewDataset(_samples(corpus.good.values()), image_size=32, mean=MEAN, std=STD,
                        aug=AugmentConfig.for_image_size(32), tokenize=None, seed=0)
    for epoch in range(3):  # different random crops of the 1-pixel and 1x500 images
        ds.set_epoch(epoch)
        for i in range(len(ds)):
            item = ds[i]
            assert item["view1"].shape == item["view2"].shape == (3, 32, 32)
            assert torch.isfinite(item["view1"]).all() and torch.isfinite(item["view2"]).all()


def test_training_batch_skips_and_names_every_bad_file(corpus):
    paths = [*corpus.good.values(), *corpus.bad.values()]
    ds = TwoViewDataset(_samples(paths), image_size=16, mean=MEAN, std=STD, aug=AugmentConfig(),
                        tokenize=None, seed=0)
    batch = collate_skipping_bad([ds[i] for i in range(len(ds))])
    assert batch["view1"].shape == (GOOD_KINDS, 3, 16, 16)
    assert len(batch["bad"]) == BAD_KINDS
    for path, message in zip(corpus.bad.values(), batch["bad"]):
        assert str(path) in message and "\n" not in message


def test_eval_view_of_every_good_file(corpus):
    ds = EvalDataset(_samples(corpus.good.values()), image_size=32, mean=MEAN, std=STD)
    for i in range(len(ds)):
        image = ds[i]["image"]
        assert image.shape == (3, 32, 32) and torch.isfinite(image).all()
    for path in corpus.bad.values():
        with pytest.raises(DataError):
            EvalDataset(_samples([path]), image_size=32, mean=MEAN, std=STD)[0]


def test_eval_view_of_an_extreme_strip_is_cheap(tmp_path):
    """A 1x40000 strip would be resized to 224 x 9 million pixels if nothing cropped it first."""
    path = tmp_path / "strip.png"
    Image.new("RGB", (1, 40000), (0, 120, 0)).save(path)
    ds = EvalDataset(_samples([path]), image_size=224, mean=(0, 0, 0), std=(1, 1, 1))
    start = time.perf_counter()
    image = ds[0]["image"]
    assert time.perf_counter() - start < 2.0
    assert image.shape == (3, 224, 224)
    torch.testing.assert_close(image[:, 112, 112], torch.tensor([0.0, 120 / 255, 0.0]), atol=0.02, rtol=0)


def test_eval_geometry_crops_image_and_mask_alike():
    """The long-side crop runs before the resize on the image and its mask together."""
    array = np.zeros((10, 60), np.uint8)
    array[:, 30:] = 1  # right half class 1
    image = Image.fromarray(np.stack([array * 255] * 3, axis=-1))
    geometry = make_eval_geometry(image_size=8)
    out, mask = geometry(image, tv_tensors.Mask(torch.from_numpy(array.astype(np.int64))))
    assert out.size == (8, 8) and mask.shape == (8, 8)
    assert torch.equal(torch.from_numpy(np.asarray(out)[..., 0] > 127), mask.as_subclass(torch.Tensor) == 1)
    assert geometry(image).size == (8, 8)  # one input works too


# ---------------------------------------------------------------- captions

PERSIAN = "گربه‌ای روی فرش قرمز"  # with a zero-width non-joiner, which must survive
CHINESE = "一只猫坐在红色的地毯上"
EMOJI = "a cat 🐈‍⬛ on a rug 👩🏽‍🚀"  # ZWJ sequences and a skin-tone modifier


def _caption_folder(root: Path, captions: dict[str, bytes]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    pixel = _png_bytes(Image.new("RGB", (4, 4), (1, 2, 3)))
    for name, raw in captions.items():
        (root / f"{name}.png").write_bytes(pixel)
        (root / f"{name}.txt").write_bytes(raw)
    return root


def test_caption_folder_skips_and_counts(tmp_path):
    long_caption = " ".join(["word"] * 200)
    folder = _caption_folder(tmp_path / "data", {
        "a_plain": b"a red square\n",
        "b_empty": b"",
        "c_blank": b" \t\r\n  \n",
        "d_latin1": "caf\xe9 au lait".encode("latin-1"),
        "e_controls": b"tab\there\x00nul\x1bescape\x7fdel\r\nnext line",
        "f_persian": PERSIAN.encode(),
        "g_chinese": CHINESE.encode(),
        "h_emoji": EMOJI.encode(),
        "i_bom": "\ufeffwith a byte-order mark".encode(),
        "j_long": long_caption.encode(),
        "k_only_controls": b"\x00\x01\x02\x7f",
    })
    os.symlink(folder / "gone.txt", folder / "l_dangling.txt")
    os.mkfifo(folder / "m_pipe.txt")  # reading it would wait forever
    for name in ("l_dangling", "m_pipe"):
        (folder / f"{name}.png").write_bytes((folder / "a_plain.png").read_bytes())

    samples = read_samples(folder)
    assert isinstance(samples, SampleList)
    captions = {s.image.stem: s.caption for s in samples}
    assert captions == {
        "a_plain": "a red square",
        "d_latin1": "caf\ufffd au lait",
        "e_controls": "tab here nul escape del next line",
        "f_persian": PERSIAN,
        "g_chinese": CHINESE,
        "h_emoji": EMOJI,
        "i_bom": "with a byte-order mark",
        "j_long": long_caption,
    }
    report = samples.report
    assert report.counts() == {
        "samples": 8, "empty_captions": 3, "unreadable_captions": 2, "invalid_utf8": 1,
        "control_chars": 1, "missing_images": 0, "duplicates": 0, "truncated_captions": 0,
    }
    assert report.skipped == 5
    assert report.examples["invalid_utf8"].endswith("d_latin1.txt")
    assert report.examples["unreadable_captions"].startswith(str(folder / "l_dangling.txt"))
    assert "\n" not in report.summary() and "3 empty_captions" in report.summary()


def test_truncated_captions_are_counted_with_the_real_tokenizer(tmp_path):
    from open_clip.tokenizer import SimpleTokenizer

    tokenizer = SimpleTokenizer(context_length=16)
    captions = {
        "short": b"a cat",
        "long": " ".join(["cat"] * 40).encode(),
        "long_again": " ".join(["cat"] * 40).encode(),
        "exact_fit": " ".join(["cat"] * 14).encode(),  # 14 tokens + start + end = 16: fills, not cut
        "one_short": " ".join(["cat"] * 13).encode(),
        "emoji": (EMOJI * 3).encode(),
    }
    samples = read_samples(_caption_folder(tmp_path / "data", captions))
    ds = TwoViewDataset(samples, image_size=16, mean=MEAN, std=STD, aug=AugmentConfig(),
                        tokenize=tokenizer, seed=0)
    expected = sorted(i for i, s in enumerate(samples) if s.image.stem in ("long", "long_again", "exact_fit", "emoji"))
    assert truncated_captions([s.caption for s in samples], tokenizer) == expected
    report = ds.data_report()
    assert report.truncated_captions == 4 and report.samples == len(captions)
    assert samples.report.truncated_captions == 0  # the reader's report is not changed
    assert ds[0]["text"].shape == (16,)


@pytest.mark.parametrize("text", ["", " ", "\x00\x85\u2028", PERSIAN, CHINESE, EMOJI, "a\ud800b"])
def test_clean_caption_examples(text):
    cleaned = clean_caption(text)
    assert cleaned.text == cleaned.text.strip() and "  " not in cleaned.text
    assert cleaned.invalid_utf8 == ("\ud800" in text)
    if text in (PERSIAN, CHINESE, EMOJI):
        assert cleaned.text == text and not cleaned.control_chars


def _expected_clean(text: str) -> str:
    swapped = "".join(
        "\ufffd" if unicodedata.category(c) == "Cs" else " " if unicodedata.category(c) == "Cc" else c
        for c in text
    )
    return " ".join(swapped.split())


@HYPOTHESIS
@given(st.text(alphabet=st.characters(exclude_categories=())))
def test_clean_caption_of_any_text(text):
    cleaned = clean_caption(text)
    assert cleaned.text == _expected_clean(text)
    assert not any(unicodedata.category(c) in ("Cc", "Cs") for c in cleaned.text)
    cleaned.text.encode("utf-8")  # always encodable (no lone surrogates), so any tokenizer takes it


@HYPOTHESIS
@given(st.binary(max_size=200))
def test_clean_caption_of_any_bytes(raw):
    try:
        raw.decode("utf-8")
        valid = True
    except UnicodeDecodeError:
        valid = False
    cleaned = clean_caption(raw)
    assert cleaned.invalid_utf8 == (not valid)
    assert cleaned.text == _expected_clean(raw.decode("utf-8-sig", errors="replace"))


_PIXEL = _png_bytes(Image.new("RGB", (2, 2)))


@HYPOTHESIS
@given(st.lists(st.one_of(st.binary(max_size=60), st.text(max_size=60).map(str.encode)), min_size=1, max_size=6))
def test_caption_folder_of_any_captions(captions):
    """Every caption file either gives its cleaned text or is counted as empty; the counts add up."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for i, raw in enumerate(captions):
            (folder / f"{i}.png").write_bytes(_PIXEL)
            (folder / f"{i}.txt").write_bytes(raw)
        expected = {str(i): clean_caption(raw) for i, raw in enumerate(captions)}
        kept = {k: c.text for k, c in expected.items() if c.text}
        try:
            samples = read_samples(folder)
        except DataError as exc:
            assert not kept and "\n" not in str(exc) and "empty_captions" in str(exc)
            return
        assert {s.image.stem: s.caption for s in samples} == kept
        report = samples.report
        assert report.samples == len(kept)
        assert report.samples + report.empty_captions == len(captions)
        assert report.invalid_utf8 == sum(c.invalid_utf8 for c in expected.values() if c.text)
        assert report.control_chars == sum(c.control_chars for c in expected.values() if c.text)


# ---------------------------------------------------------------- tables


def _write_table(path: Path, rows: list[list[str]], *, delimiter: str = ",") -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        csv.writer(f, delimiter=delimiter).writerows(rows)
    return path


def test_table_skips_counts_and_drops_duplicates(tmp_path):
    for name in ("a", "b", "c"):
        (tmp_path / f"{name}.png").write_bytes(_PIXEL)
    table = _write_table(tmp_path / "data.csv", [
        ["filepath", "title"],
        ["a.png", "first"],
        ["a.png", "first"],  # exact repeat: dropped
        ["./a.png", "first"],  # the same file spelled differently: still a repeat
        ["a.png", "another caption"],  # the same image with another caption: kept
        ["b.png", ""],
        ["b.png", "   "],
        ["missing.png", "gone"],
        ["", "no path"],
        ["c.png", "tab\tand\x07bell"],
        ["c.png", EMOJI],
    ])
    # A stray Latin-1 byte inside one caption cell costs that caption a U+FFFD, not the table.
    with open(table, "ab") as f:
        f.write(b"b.png,caf\xe9\n")
    samples = read_samples(table)
    assert [(s.image.name, s.caption) for s in samples] == [
        ("a.png", "first"), ("a.png", "another caption"), ("c.png", "tab and bell"), ("c.png", EMOJI),
        ("b.png", "caf\ufffd"),
    ]
    report = samples.report
    assert report.counts() == {
        "samples": 5, "empty_captions": 2, "unreadable_captions": 0, "invalid_utf8": 1,
        "control_chars": 1, "missing_images": 2, "duplicates": 2, "truncated_captions": 0,
    }
    assert report.examples["duplicates"] == f"{table} line 3"
    assert report.examples["missing_images"] == f"{table} line 8: {tmp_path / 'missing.png'}"


def test_table_with_nothing_usable_is_one_line(tmp_path):
    table = _write_table(tmp_path / "data.csv", [["filepath", "title"], ["x.png", "a"], ["y.png", "b"]])
    with pytest.raises(DataError, match=r"no usable rows .*2 missing_images .*x\.png.*table's folder") as info:
        read_samples(table)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("content", [
    b"",
    b"\n\n",
    b"filepath,title\n",
    b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00",
    b"filepath,title\n" + b"a" * 200_000 + b",x\n",  # a field over the csv module's limit
    b'filepath,title\n"unterminated,quote\n',
    b"\xff\xfe\x00f\x00i\x00l\x00e",  # UTF-16
])
def test_unreadable_tables_are_one_line(tmp_path, content):
    table = tmp_path / "data.csv"
    table.write_bytes(content)
    with pytest.raises(DataError) as info:
        read_samples(table)
    assert "\n" not in str(info.value) and str(table) in str(info.value)


def test_table_header_with_many_junk_columns_is_listed_briefly(tmp_path):
    table = tmp_path / "data.csv"
    table.write_text(",".join(f"col{i}" for i in range(500)) + "\n" + ",".join("x" * 500) + "\n")
    with pytest.raises(DataError, match=r"\.\.\. \(500 in all\)") as info:
        read_samples(table)
    assert len(str(info.value)) < 500


@HYPOTHESIS
@given(st.one_of(st.binary(max_size=300), st.text(max_size=300).map(str.encode)), st.booleans())
def test_any_csv_reads_or_is_one_line(content, with_header):
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "a.png").write_bytes(_PIXEL)
        table = Path(tmp) / "data.csv"
        table.write_bytes((b"filepath,title\n" if with_header else b"") + content)
        try:
            samples = read_samples(table)
        except DataError as exc:
            assert "\n" not in str(exc) and str(exc)
            return
        assert samples and all(s.caption and s.image.is_file() for s in samples)
        assert samples.report.samples == len(samples)


_CELL = st.text(max_size=20)


@HYPOTHESIS
@given(st.lists(st.tuples(st.sampled_from(["a.png", "b.png", "gone.png", "", " a.png "]), _CELL),
                min_size=1, max_size=12))
def test_any_rows_are_kept_or_counted(rows):
    """With the columns found, every row is kept, or counted once as missing, empty or a repeat."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for name in ("a.png", "b.png"):
            (root / name).write_bytes(_PIXEL)
        table = _write_table(root / "data.tsv", [["filepath", "title"], *map(list, rows)], delimiter="\t")
        expected, seen = [], set()
        for image, caption in rows:
            text = clean_caption(caption).text
            if image.strip() in ("a.png", "b.png") and text and (image.strip(), text) not in seen:
                seen.add((image.strip(), text))
                expected.append((image.strip(), text))
        try:
            samples = read_samples(table)
        except DataError as exc:
            assert not expected and "\n" not in str(exc)
            return
        assert [(s.image.name, s.caption) for s in samples] == expected
        report = samples.report
        assert report.samples + report.skipped == len(rows)


# ---------------------------------------------------------------- folders


def test_empty_folders_are_one_line_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "hidden").mkdir()
    (tmp_path / "hidden" / ".DS_Store").write_bytes(b"")
    for name in ("empty", "hidden"):
        with pytest.raises(DataError, match="data folder is empty") as info:
            read_samples(tmp_path / name)
        assert "\n" not in str(info.value)


@pytest.mark.parametrize("layout", ["captions", "classes"])
def test_symlink_loop_in_a_data_folder(tmp_path, layout):
    folder = tmp_path / "data"
    for cls in ("cat", "dog"):
        (folder / cls).mkdir(parents=True)
        (folder / cls / "0.png").write_bytes(_PIXEL)
        if layout == "captions":
            (folder / cls / "0.txt").write_text(f"a {cls}")
    os.symlink(folder, folder / "loop")  # a link back to the root, inside the tree
    os.symlink(folder / "cat", folder / "dog" / "back")  # and one sideways
    start = time.perf_counter()
    samples = read_samples(folder)
    assert time.perf_counter() - start < 5
    assert sorted(str(s.image.relative_to(folder)) for s in samples) == ["cat/0.png", "dog/0.png"]
    assert sorted(p.name for p in walk_files(folder)) == (["0.png", "0.png", "0.txt", "0.txt"]
                                                          if layout == "captions" else ["0.png", "0.png"])


def test_symlink_loop_in_command_inputs(tmp_path):
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "x.png").write_bytes(_PIXEL)
    os.symlink(tmp_path / "imgs", tmp_path / "imgs" / "loop")
    os.symlink("self.png", tmp_path / "imgs" / "self.png")
    got = expand_inputs([str(tmp_path / "imgs"), str(tmp_path / "imgs" / "**" / "*.png"),
                         str(tmp_path / "imgs" / "self.png"), "~no-such-user-here/a.png"])
    assert got.paths == [tmp_path / "imgs" / "self.png", tmp_path / "imgs" / "x.png"]
    assert got.missing == ["~no-such-user-here/a.png"]


def test_read_report_defaults():
    samples = SampleList([Sample(image=Path("a.png"), caption="a")])
    assert samples.report == ReadReport(samples=1) and samples.report.summary() == ""
    assert samples == [Sample(image=Path("a.png"), caption="a")] and type(samples[:1]) is list


# ---------------------------------------------------------------- the inference commands

runner = CliRunner()


@pytest.fixture(scope="module")
def command_inputs(corpus, tmp_path_factory):
    """Every corpus file, three ordinary images, and a path that does not exist."""
    extra = tmp_path_factory.mktemp("good")
    ordinary = []
    for i, colour in enumerate([(250, 250, 250), (20, 20, 20), (200, 30, 30)]):
        ordinary.append(extra / f"ordinary-{i}.png")
        Image.new("RGB", (64, 48), colour).save(ordinary[-1])
    good = [*ordinary, *corpus.good.values()]
    bad = [*corpus.bad.values(), extra / "does-not-exist.png"]
    return good, bad


def _invoke(*args):
    result = runner.invoke(app, [os.fspath(a) for a in args])
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    return result


def _shown(path: Path) -> str:
    """How a path appears in a one-line message (control characters and bad bytes escaped)."""
    from detailclip_cli.cli._use import one_line

    return one_line(path)


def _check_stderr(result, bad: list[Path]) -> None:
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == len(bad), result.stderr
    for path in bad:
        assert sum(_shown(path) in line for line in errors) >= 1, (path, result.stderr)
    for path in bad:  # the one line naming each file says what is wrong
        line = next(line for line in errors if _shown(path) in line)
        assert len(line) < 400


@pytest.mark.parametrize("command", ["zero-shot", "attn-map", "reconstruct"])
def test_commands_answer_good_inputs_and_name_bad_ones(command, command_inputs, tmp_path):
    good, bad = command_inputs
    order = [p for pair in zip(good, bad) for p in pair] + good[len(bad):] + bad[len(good):]
    args = {
        "zero-shot": ["--labels", "red,white,black", "--format", "jsonl"],
        "attn-map": ["--format", "json"],
        "reconstruct": ["--format", "json", "--out", tmp_path / "recon"],
    }[command]
    result = _invoke(command, *order, "--model", SHIPPED_MODEL, "--device", "cpu", *args)
    assert result.exit_code == 1
    if command == "zero-shot":
        records = [json.loads(line) for line in result.stdout.splitlines()]
    else:
        records = json.loads(result.stdout)["images"]
    assert [r["path"] for r in records] == [str(p) for p in order if p in good]
    _check_stderr(result, bad)
    if command == "reconstruct":
        pictures = [Path(r["png"]) for r in records]
        assert len(set(pictures)) == len(good) and all(p.stat().st_size > 0 for p in pictures)
        assert all("\n" not in str(p) for p in pictures)


@pytest.mark.parametrize("fmt", ["table", "csv"])
def test_zero_shot_table_and_csv_write_names_that_are_not_utf8(corpus, fmt, tmp_path):
    """A strict UTF-8 stdout (CliRunner's, or an en_US.UTF-8 terminal) must not fail on such a name."""
    path = corpus.good["name_not_utf8"]
    result = _invoke("zero-shot", path, "--labels", "a,b", "--model", SHIPPED_MODEL, "--device", "cpu",
                     "--format", fmt)
    assert result.exit_code == 0 and os.fsencode(path) in result.stdout_bytes
    out = tmp_path / "res.csv"
    _invoke("zero-shot", path, "--labels", "a,b", "--model", SHIPPED_MODEL, "--device", "cpu",
            "--format", "csv", "--output", out)
    assert os.fsencode(path) in out.read_bytes()


@pytest.mark.parametrize("command", ["attn-map", "reconstruct"])
@pytest.mark.parametrize("kind", ["name_with_newline", "name_not_utf8"])
def test_pictures_of_odd_names(corpus, command, kind, tmp_path):
    result = _invoke(command, corpus.good[kind], "--model", SHIPPED_MODEL, "--device", "cpu",
                     "--out", tmp_path / "pictures")
    assert result.exit_code == 0
    pictures = list((tmp_path / "pictures").iterdir())
    assert len(pictures) == 1 and pictures[0].stat().st_size > 0
    assert "\n" not in pictures[0].name
    if command == "attn-map":
        assert result.stdout.splitlines() == [str(pictures[0])]


def test_all_inputs_bad_exits_1_with_nothing_on_stdout(command_inputs):
    _, bad = command_inputs
    result = _invoke("zero-shot", *bad, "--labels", "a,b", "--model", SHIPPED_MODEL, "--device", "cpu",
                     "--format", "jsonl")
    assert result.exit_code == 1 and result.stdout == ""
    _check_stderr(result, bad)


def test_pretrain_on_a_caption_folder_built_from_the_corpus(corpus, tmp_path):
    """Every corpus file with a caption, plus caption problems: the run finishes, skips and counts."""
    import shutil

    data = tmp_path / "data"
    data.mkdir()
    for i, path in enumerate([*corpus.good.values(), *corpus.bad.values()]):
        if not path.is_file() or path.is_symlink():
            continue  # links, pipes and folders are covered by the folder tests above
        target = data / f"{i:02d}{path.suffix}"
        shutil.copyfile(path, target)
        target.with_suffix(".txt").write_text(f"picture number {i}")
    for i in range(40):  # mostly readable data, as a real collection is
        Image.new("RGB", (40, 30), (20 * i, 100, 200 - 10 * i)).save(data / f"ok{i:02d}.png")
        (data / f"ok{i:02d}.txt").write_text(["", "tiny \x07 bell", "مربع آبی 青い四角 🟦", "x " * 300][i % 4])
    config = tmp_path / "cfg.json"
    config.write_text(json.dumps({"preset": "tiny", "model": {"vision": {"depth": 1}, "text": {"layers": 1},
                                                               "head": {"out_dim": 64}},
                                  "train": {"batch_size": 4, "log_every": 1}}))
    out = tmp_path / "run"
    result = _invoke("pretrain", "--data", data, "--config", config, "--steps", "12", "--out", out,
                     "--device", "cpu", "--max-bad-fraction", "0.5")
    assert result.exit_code == 0, result.output
    assert "data: " in result.stderr and "empty_captions" in result.stderr
    report = json.loads((out / "run.json").read_text())["data_report"]
    assert report["empty_captions"] == 10 and report["control_chars"] == 10 and report["truncated_captions"] == 10
    skipped = sum(json.loads(line)["bad_samples"] for line in (out / "metrics.jsonl").read_text().splitlines()[-1:])
    assert skipped >= 1  # some of the unreadable images were drawn and skipped
    assert (out / "model.safetensors").is_file()
