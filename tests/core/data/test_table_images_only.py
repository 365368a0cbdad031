"""A CSV/TSV read for its images alone (``distill``, issue 19 finding 9): rows with empty or missing
captions keep their images, as a folder read with ``images_only`` keeps images without ``.txt``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from detailclip_cli.core.data import DataError, open_source, read_samples
from detailclip_cli.core.data.formats.table import read_table


def _png(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (10, 200, 30)).save(path)
    return path


@pytest.fixture
def table(tmp_path) -> Path:
    """Five rows: a caption, an empty one, one of spaces only, a second caption of the first image,
    and an image that does not exist."""
    for name in "abc":
        _png(tmp_path / "img" / f"{name}.png")
    path = tmp_path / "data.csv"
    path.write_text("filepath,title\n"
                    "img/a.png,a green square\n"
                    "img/b.png,\n"
                    'img/c.png,"   "\n'
                    "img/a.png,another caption of a\n"
                    "img/missing.png,gone\n")
    return path


def test_images_only_keeps_rows_whatever_their_caption(table):
    base = table.parent / "img"
    samples = read_table(table, image_column="filepath", caption_column="title", label_column=None,
                         images_only=True)
    assert [(s.image, s.caption, s.label) for s in samples] == [(base / "a.png", "", None),
                                                                  (base / "b.png", "", None),
                                                                  (base / "c.png", "", None)]
    counts = samples.report.counts()
    assert (counts["samples"], counts["empty_captions"], counts["duplicates"], counts["missing_images"]) == (3, 0, 1, 1)


def test_with_captions_the_same_table_drops_the_empty_ones(table):
    samples = read_samples(table)
    assert [(s.image.name, s.caption) for s in samples] == [("a.png", "a green square"),
                                                            ("a.png", "another caption of a")]
    assert samples.report.counts()["empty_captions"] == 2


def test_open_source_images_only_reads_tables_and_tsv_without_a_caption_column(table, tmp_path):
    assert open_source(table, images_only=True) == read_table(
        table, image_column="filepath", caption_column="title", label_column=None, images_only=True)
    tsv = tmp_path / "images.tsv"
    tsv.write_text("filepath\nimg/b.png\nimg/a.png\n")  # no caption column at all
    assert [s.image.name for s in open_source(tsv, images_only=True)] == ["b.png", "a.png"]
    with pytest.raises(DataError, match="column 'title' not found"):
        read_samples(tsv)  # read with captions, the column is required as before


@pytest.mark.slow
def test_distill_trains_on_every_image_of_a_table(table, tmp_path, monkeypatch, capsys):
    from helpers import cli

    for i in range(5):  # enough images for a batch of 4, half of them without a caption
        _png(tmp_path / "img" / f"more{i}.png")
    with open(table, "a") as f:
        f.writelines(f"img/more{i}.png,{'a caption' if i % 2 else ''}\n" for i in range(5))
    out = tmp_path / "run"
    code, err = cli(monkeypatch, capsys, "distill", "--data", table, "--out", out, "--steps", "1", "--batch-size", "4")
    assert code == 0, err
    report = json.loads((out / "run.json").read_text())["data_report"]
    assert (report["samples"], report["empty_captions"], report["duplicates"]) == (8, 0, 1)
