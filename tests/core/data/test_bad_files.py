"""Broken and unusual files: each good one is read, each bad one is named in one line, nothing crashes.

A generated corpus of tiny files (``helpers.build_corpus``) goes through the image loader and the
training and evaluation datasets; captions, tables and folders get their own broken cases, and
hypothesis throws arbitrary text and bytes at the caption and table readers. The commands meet
the same corpus in ``tests/cli/test_bad_inputs.py``.
"""

from __future__ import annotations

import csv
import os
import tempfile
import time
import unicodedata
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import BAD_KINDS, GOOD_KINDS, build_corpus, png_bytes
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from torchvision import tv_tensors

from detailclip_cli.core.data import (
    AugmentConfig,
    DataError,
    EvalDataset,
    ReadReport,
    Sample,
    SampleList,
    TwoViewDataset,
    clean_caption,
    collate_skipping_bad,
    load_image,
    make_eval_geometry,
    read_samples,
    truncated_captions,
    walk_files,
)

MEAN = (0.5, 0.5, 0.5)
STD = (0.25, 0.25, 0.25)
HYPOTHESIS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# ---------------------------------------------------------------- the corpus (the fixture is in conftest.py)


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
    pixel = png_bytes(Image.new("RGB", (4, 4), (1, 2, 3)))
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
        "failed_shards": 0,
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


_PIXEL = png_bytes(Image.new("RGB", (2, 2)))


@pytest.mark.slow
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
        "failed_shards": 0,
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


def test_read_report_defaults():
    samples = SampleList([Sample(image=Path("a.png"), caption="a")])
    assert samples.report == ReadReport(samples=1) and samples.report.summary() == ""
    assert samples == [Sample(image=Path("a.png"), caption="a")] and type(samples[:1]) is list

