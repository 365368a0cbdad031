"""The data-source factory: what each kind of ``--data`` opens as, the written protocols each
source and dataset implements, and an img2dataset output folder read as shards."""

from __future__ import annotations

import io
import itertools
import json
import tarfile
from pathlib import Path

import pytest
import torch
from helpers import cli
from PIL import Image

from detailclip_cli.core.config import TrainConfig
from detailclip_cli.core.data import (
    AugmentConfig,
    DataError,
    MapSource,
    ReportingDataset,
    SampleList,
    ShardDataset,
    ShardSource,
    StreamingDataset,
    StreamSource,
    TwoViewDataset,
    is_shard_spec,
    open_source,
    read_samples,
    write_shards,
)
from detailclip_cli.core.data.shards import shard_paths

SIZE = 16  # side of the training views


def fake_tokenize(captions: list[str]) -> torch.Tensor:
    return torch.tensor([[len(c), 1, 0, 0] for c in captions])


def views(*, captions: bool = True) -> TwoViewDataset:
    return TwoViewDataset(None, image_size=SIZE, mean=(0.5,) * 3, std=(0.25,) * 3,
                          aug=AugmentConfig.for_image_size(SIZE), tokenize=fake_tokenize if captions else None,
                          seed=0)


def cfg(**kw) -> TrainConfig:
    return TrainConfig.from_dict({**TrainConfig().to_dict(), "batch_size": 4, "workers": 0, **kw})


def jpeg(colour: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (10, 8), colour).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def captioned_folder(root: Path, n: int = 8) -> Path:
    for i in range(n):
        stem = root / ("cat", "dog")[i % 2] / f"img{i}"
        stem.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (9, 7), (20 * i, 90, 200)).save(stem.with_suffix(".png"))
        stem.with_suffix(".txt").write_text(f"picture {i}")
    return root


# img2dataset writes one shard per `number_sample_per_shard` samples, named with `oom_shard_count`
# (5) digits; each key is the shard id followed by the sample's place in it.
IMG2DATASET_SHARDS, IMG2DATASET_PER_SHARD = 3, 4


def img2dataset_folder(root: Path) -> Path:
    """A miniature of what ``img2dataset --output_format webdataset`` writes, in its exact layout.

    Per shard: ``00000.tar`` (``000000000.jpg`` + ``.txt`` caption + ``.json`` metadata, the
    successful downloads only), ``00000.parquet`` (the metadata table of every URL) and
    ``00000_stats.json`` (the shard's download counts). pyarrow is not installed, so the
    ``.parquet`` files hold placeholder bytes: the reader must never open them (nor the stats).
    """
    root.mkdir(parents=True)
    for shard in range(IMG2DATASET_SHARDS):
        name = f"{shard:05d}"
        with tarfile.open(root / f"{name}.tar", "w") as tar:
            for i in range(IMG2DATASET_PER_SHARD):
                key = f"{name}{i:04d}"
                caption = f"photo {shard * IMG2DATASET_PER_SHARD + i} from the web"
                meta = {"url": f"https://example.com/{key}.jpg", "caption": caption, "key": key,
                        "status": "success", "error_message": None, "width": 10, "height": 8}
                for ext, data in (("jpg", jpeg((60 * shard, 40 * i, 120))), ("txt", caption.encode()),
                                  ("json", json.dumps(meta, indent=4).encode())):
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
        (root / f"{name}.parquet").write_bytes(b"PAR1 placeholder: not a real parquet file PAR1")
        stats = {"count": IMG2DATASET_PER_SHARD + 1, "successes": IMG2DATASET_PER_SHARD, "failed_to_download": 1,
                 "failed_to_resize": 0, "duration": 1.5, "status_dict": {"success": IMG2DATASET_PER_SHARD}}
        (root / f"{name}_stats.json").write_text(json.dumps(stats, indent=4))
    return root


@pytest.fixture(scope="module")
def img2dataset(tmp_path_factory) -> Path:
    return img2dataset_folder(tmp_path_factory.mktemp("i2d") / "out")


# ---------------------------------------------------------------- what each spec opens as


def test_map_formats_open_as_sample_lists(tmp_path, demo_cache):
    folder = captioned_folder(tmp_path / "folder")
    table = tmp_path / "data.csv"
    table.write_text("filepath,title\n" + "".join(f"{p},{p.stem}\n" for p in sorted(folder.rglob("*.png"))))
    for spec, n in (("demo", 2000), (folder, 8), (table, 8)):
        source = open_source(spec)
        assert isinstance(source, SampleList) and isinstance(source, MapSource)
        assert not isinstance(source, StreamSource)
        assert len(source) == source.report.samples == n
        assert source == read_samples(spec)  # the map formats read as they always did
    # demo v5's digits are chiral (a mirror would contradict the caption); v6's patterns are not
    assert open_source("demo:v5").chiral and not open_source("demo").chiral and not open_source(folder).chiral


def test_shard_specs_open_as_stream_sources(tmp_path):
    shards = tmp_path / "shards"
    write_shards(read_samples(captioned_folder(tmp_path / "folder")), shards, samples_per_shard=3)
    for spec in (shards, shards / "000000.tar", f"{shards}/{{000000..000002}}.tar"):
        source = open_source(spec)
        assert isinstance(source, ShardSource) and isinstance(source, StreamSource)
        assert not isinstance(source, MapSource) and not source.chiral
    assert len(open_source(shards)) == 8 and len(open_source(shards / "000002.tar")) == 2
    assert len(open_source(shards, samples_per_epoch=20)) == 20


def test_the_factory_keeps_each_refusal(tmp_path):
    folder = captioned_folder(tmp_path / "folder")
    with pytest.raises(DataError, match="--samples-per-epoch is for tar shards"):
        open_source(folder, samples_per_epoch=10)
    with pytest.raises(DataError, match="data path does not exist"):
        open_source(tmp_path / "missing")
    with pytest.raises(DataError, match=r"shard not found: .*nowhere.tar"):
        open_source(tmp_path / "nowhere.tar")
    # Without streaming (evaluation), a shard is read as any other file, and refused as one.
    write_shards(read_samples(folder), tmp_path / "shards", samples_per_shard=8)
    with pytest.raises(DataError, match="unsupported data file .*000000.tar"):
        open_source(tmp_path / "shards" / "000000.tar", streaming=False)


def test_images_only_reads_a_folder_without_captions(tmp_path, demo_cache):
    for i in range(3):
        Image.new("RGB", (5, 5)).save(tmp_path / f"photo{i}.png")
    with pytest.raises(DataError, match="neither .txt captions nor class sub-folders"):
        open_source(tmp_path)
    source = open_source(tmp_path, images_only=True)
    assert isinstance(source, MapSource)
    assert [(s.image.name, s.caption) for s in source] == [(f"photo{i}.png", "") for i in range(3)]
    assert open_source("demo", images_only=True) == read_samples("demo")  # other formats read as they are


# ---------------------------------------------------------------- the protocols


def test_datasets_implement_the_written_protocols(tmp_path):
    shards = tmp_path / "shards"
    write_shards(read_samples(captioned_folder(tmp_path / "folder")), shards, samples_per_shard=4)
    stream = open_source(shards).stream(views(), seed=0)
    assert isinstance(stream, ShardDataset) and isinstance(stream, StreamingDataset)
    assert len(stream) == 8 and stream.data_report().samples == 8
    mapped = TwoViewDataset(read_samples(tmp_path / "folder"), image_size=SIZE, mean=(0.5,) * 3, std=(0.25,) * 3,
                            aug=AugmentConfig.for_image_size(SIZE), tokenize=None, seed=0)
    assert isinstance(mapped, ReportingDataset) and not isinstance(mapped, StreamingDataset)
    # A source's stream is the stream of its spec: the same batches.
    direct = ShardDataset(shards, views=views(), seed=0)
    for a, b in zip(itertools.islice(stream.batches(cfg(), 0), 2), itertools.islice(direct.batches(cfg(), 0), 2)):
        assert torch.equal(a["index"], b["index"]) and torch.equal(a["view1"], b["view1"])


# ---------------------------------------------------------------- img2dataset's output folder


def test_an_img2dataset_folder_is_shards(img2dataset):
    total = IMG2DATASET_SHARDS * IMG2DATASET_PER_SHARD
    assert is_shard_spec(img2dataset)
    assert [p.name for p in shard_paths(img2dataset)] == ["00000.tar", "00001.tar", "00002.tar"]
    source = open_source(img2dataset)
    pattern = open_source(f"{img2dataset}/{{00000..00002}}.tar")  # what already worked
    assert isinstance(source, ShardSource) and len(source) == len(pattern) == total
    stream = source.stream(views(), seed=0)
    assert stream.data_report().counts() == pattern.stream(views(), seed=0).data_report().counts()
    batches = list(itertools.islice(stream.batches(cfg(), 0), total // 4))
    assert sorted(int(i) for b in batches for i in b["index"]) == list(range(total))
    assert not any(b["bad"] for b in batches) and all(b["text"].shape == (4, 4) for b in batches)


def test_only_files_of_the_shards_may_sit_beside_them(img2dataset, tmp_path):
    """A stray file, or a sidecar without its shard, still makes a folder an image folder."""
    for extra in ("notes.md", "00007.parquet", "00007_stats.json"):
        folder = tmp_path / extra
        folder.mkdir()
        for f in img2dataset.iterdir():
            (folder / f.name).write_bytes(f.read_bytes())
        (folder / extra).write_text("x")
        assert not is_shard_spec(folder), extra
        with pytest.raises(DataError, match="no images found"):
            open_source(folder)


@pytest.mark.slow
def test_pretrain_on_an_img2dataset_folder(img2dataset, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    code, err = cli(monkeypatch, capsys, "pretrain", "--data", img2dataset, "--preset", "tiny", "--steps", "2",
                    "--batch-size", "4", "--out", out, "--device", "cpu")
    assert code == 0, err
    report = json.loads((out / "run.json").read_text())["data_report"]
    assert report["samples"] == IMG2DATASET_SHARDS * IMG2DATASET_PER_SHARD
