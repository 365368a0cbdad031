"""Tar shards: writing them, reading them back, the stream's split, order, resume and bad samples,
and `detailclip shard` / `pretrain` / `distill` on shards end to end."""

from __future__ import annotations

import io
import itertools
import json
import math
import sys
import tarfile
from pathlib import Path
from typing import NamedTuple

import pytest
import torch
from PIL import Image

from detailclip_cli.cli import main
from detailclip_cli.core.config import TrainConfig
from detailclip_cli.core.data import AugmentConfig, DataError, TwoViewDataset, decode_image, load_image, read_samples
from detailclip_cli.core.data.shards import (
    INDEX_FILE,
    ShardDataset,
    expand_braces,
    is_shard_spec,
    scan_shard,
    shard_paths,
    tar_groups,
    write_shards,
)

SIZE = 16  # side of the training views in the stream tests


class Result(NamedTuple):
    returncode: int
    stdout: str
    stderr: str


@pytest.fixture
def run_cli(capsys, monkeypatch):
    """Run ``detailclip ARGS...`` in this process, through the entry point that maps errors to exit codes."""
    def run(*args) -> Result:
        monkeypatch.setattr(sys, "argv", ["detailclip", *map(str, args)])
        with pytest.raises(SystemExit) as exit_:
            main()
        out = capsys.readouterr()
        return Result(exit_.value.code, out.out, out.err)

    return run


def make_folder(root: Path, n: int = 32) -> Path:
    """``n`` small captioned images in two class folders: PNG, JPEG (one rotated by EXIF), BMP, WebP."""
    for i in range(n):
        label = ("cat", "dog")[i % 2]
        image = Image.new("RGB", (12 + i % 7, 10 + i % 5), (8 * i, 255 - 7 * i, (40 * i) % 256))
        image.putpixel((1, 2), (255, 255, 255))  # so a rotation shows
        stem = root / label / f"img{i:02d}"
        stem.parent.mkdir(parents=True, exist_ok=True)
        if i == 3:
            exif = Image.Exif()
            exif[0x0112] = 6  # orientation: rotate 90 degrees to show
            image.save(stem.with_suffix(".jpg"), exif=exif.tobytes(), quality=95)
        else:
            image.save(stem.with_suffix((".png", ".jpg", ".bmp", ".webp")[i % 4]))
        stem.with_suffix(".txt").write_text(f"a {label} picture number {i}")
    return root


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return make_folder(tmp_path_factory.mktemp("folder"))


@pytest.fixture(scope="module")
def shards(folder, tmp_path_factory) -> Path:
    """The folder as 4 shards of 8 samples."""
    out = tmp_path_factory.mktemp("shards") / "out"
    summary = write_shards(read_samples(folder), out, samples_per_shard=8)
    assert summary.samples == 32 and len(summary.shards) == 4 and not summary.skipped
    return out


def fake_tokenize(captions: list[str]) -> torch.Tensor:
    return torch.tensor([[len(c), 1, 0, 0] for c in captions])


def views(*, captions: bool = False, seed: int = 0) -> TwoViewDataset:
    return TwoViewDataset(None, image_size=SIZE, mean=(0.5,) * 3, std=(0.25,) * 3,
                          aug=AugmentConfig.for_image_size(SIZE), tokenize=fake_tokenize if captions else None,
                          seed=seed)


def cfg(**kw) -> TrainConfig:
    return TrainConfig.from_dict({**TrainConfig().to_dict(), "batch_size": 4, "workers": 0, **kw})


def take(dataset: ShardDataset, config: TrainConfig, start: int, n: int, **kw) -> list[dict]:
    return list(itertools.islice(dataset.batches(config, start, **kw), n))


def write_tar(path: Path, members: list[tuple[str, bytes]]) -> Path:
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def png(colour=(10, 200, 30), size=(9, 7)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


# ---------------------------------------------------------------- specs


def test_expand_braces():
    assert expand_braces("s/{000..002}.tar") == ["s/000.tar", "s/001.tar", "s/002.tar"]
    assert expand_braces("{a,b}/{8..10}.tar") == ["a/8.tar", "a/9.tar", "a/10.tar", "b/8.tar", "b/9.tar", "b/10.tar"]
    assert expand_braces("plain.tar") == ["plain.tar"]
    assert expand_braces("x{}.tar") == ["x{}.tar"]


def test_shard_specs(shards, folder):
    assert is_shard_spec(shards) and is_shard_spec(shards / "000000.tar")
    assert is_shard_spec(f"{shards}/{{000000..000001}}.tar")
    assert not is_shard_spec(folder) and not is_shard_spec("demo")
    assert [p.name for p in shard_paths(f"{shards}/{{000001..000002}}.tar")] == ["000001.tar", "000002.tar"]
    assert [p.name for p in shard_paths(shards)] == [f"{i:06d}.tar" for i in range(4)]
    with pytest.raises(DataError, match=r"shard not found: .*000004.tar \(6 of the 10 shards"):
        shard_paths(f"{shards}/{{000000..000009}}.tar")


# ---------------------------------------------------------------- writing


def test_shards_hold_what_the_folder_reader_reads(folder, shards):
    """The same (caption, label, pixels) set, images decoded the same way (EXIF rotation included)."""
    expected = {(s.caption, s.label, load_image(s.image).tobytes()) for s in read_samples(folder)}
    found = set()
    for path in shard_paths(shards):
        with tarfile.open(path) as tar:
            for key, members in tar_groups(tar):
                def data(ext):
                    tar.fileobj.seek(members[ext].offset)
                    return tar.fileobj.read(members[ext].size)

                ext = next(e for e in members if e not in ("txt", "json"))
                found.add((data("txt").decode(), json.loads(data("json"))["label"],
                           decode_image(data(ext), key).tobytes()))
    assert found == expected and len(found) == 32


def test_original_bytes_are_kept_and_other_formats_become_png(folder, shards):
    sources = {s.caption: s.image for s in read_samples(folder)}
    kinds = set()
    for path in shard_paths(shards):
        with tarfile.open(path) as tar:
            members = {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}
        for name, data in members.items():
            if name.endswith(".txt"):
                key = name[:-4]
                image_name = next(n for n in members if n.startswith(key + ".") and n.split(".")[-1] not in ("txt", "json"))
                source = sources[data.decode()]
                kinds.add((source.suffix, image_name.split(".")[-1]))
                if source.suffix in (".png", ".jpg", ".webp"):
                    assert members[image_name] == source.read_bytes()
    assert kinds == {(".png", "png"), (".jpg", "jpg"), (".bmp", "png"), (".webp", "webp")}


def test_index_matches_a_scan(shards):
    index = json.loads((shards / INDEX_FILE).read_text())
    assert index["samples"] == 32
    for entry in index["shards"]:
        scanned = scan_shard(shards / entry["name"])
        assert (scanned.samples, scanned.bytes) == (entry["samples"], entry["bytes"]) == (8, (shards / entry["name"]).stat().st_size)


def test_a_crash_leaves_only_whole_shards(folder, tmp_path):
    def crash(done, problem):
        if done == 12:
            raise KeyboardInterrupt

    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        write_shards(read_samples(folder), out, samples_per_shard=8, progress=crash)
    assert sorted(p.name for p in out.iterdir()) == ["000000.tar"]  # no temporary file, no index
    assert scan_shard(out / "000000.tar").samples == 8


# ---------------------------------------------------------------- the stream


@pytest.mark.parametrize("per_shard", [8, 32])  # 4 shards for 4 readers, or 1 shard they share
def test_ranks_and_workers_read_every_sample_once_per_epoch(folder, tmp_path, per_shard):
    out = tmp_path / "s"
    write_shards(read_samples(folder), out, samples_per_shard=per_shard)
    dataset = ShardDataset(out, views=views(), seed=0)
    config = cfg(batch_size=8, workers=2)  # 2 ranks x 2 workers = 4 readers of 8 samples: 2 batches of 4 each
    assert dataset.steps_per_epoch(4, 2, 2) == 4
    epochs = []
    for epoch in range(2):
        ids = [int(i) for rank in (0, 1) for b in take(dataset, config, 4 * epoch, 4, rank=rank, world_size=2)
               for i in b["index"]]
        assert sorted(ids) == list(range(32))
        epochs.append(ids)
    assert epochs[0] != epochs[1]  # a fresh order each epoch


def test_resume_continues_the_same_batches(shards):
    dataset = ShardDataset(shards, views=views(), seed=3)
    config = cfg(workers=2)  # 8 steps an epoch; resume mid-epoch, at an odd step, across the epoch end
    whole = take(dataset, config, 0, 11)
    for start in (3, 8):
        resumed = take(dataset, config, start, 11 - start)
        for a, b in zip(whole[start:], resumed):
            assert torch.equal(a["index"], b["index"])
            assert torch.equal(a["view1"], b["view1"]) and torch.equal(a["view2"], b["view2"])


def test_shuffle_buffer_order_is_seeded(shards):
    def order(seed, buffer):
        dataset = ShardDataset(shards, views=views(seed=seed), seed=seed, shuffle_buffer=buffer)
        return [int(i) for b in take(dataset, cfg(), 0, 8) for i in b["index"]]

    assert order(0, 100) == order(0, 100)
    assert order(0, 100) != order(1, 100)
    plain = order(0, 1)  # no shuffling: whole shards, each in its own order
    assert plain != order(0, 100)
    assert [plain[i:i + 8] for i in range(0, 32, 8)] == [list(range(s, s + 8)) for s in (plain[0], plain[8], plain[16], plain[24])]


def test_longer_epochs_repeat_the_data(shards):
    dataset = ShardDataset(shards, views=views(), seed=0, samples_per_epoch=64)
    assert len(dataset) == 64
    ids = [int(i) for b in take(dataset, cfg(), 0, 16) for i in b["index"]]
    assert sorted(ids) == sorted(list(range(32)) * 2)


@pytest.fixture
def damaged(tmp_path) -> Path:
    """One shard: 6 good samples (one captioned by JSON), then a corrupt image, a sample without
    caption, one with bad JSON, and one without an image."""
    members = []
    for i in range(6):
        members.append((f"ok{i}.png", png((30 * i, 90, 200))))
        members.append((f"ok{i}.txt" if i else f"ok{i}.json", b"a good one" if i else b'{"caption": "from json"}'))
    members += [("broken.jpg", b"\xff\xd8\xff not really a jpeg"), ("broken.txt", b"a broken image"),
                ("nocap.png", png()), ("badjson.png", png()), ("badjson.json", b"{not json"),
                ("noimage.txt", b"a caption alone")]
    return write_tar(tmp_path / "000000.tar", members)


def test_bad_samples_are_skipped_and_counted(damaged):
    dataset = ShardDataset(damaged, views=views(captions=True), seed=0)
    report = dataset.data_report()
    assert (report.samples, report.missing_images, report.unreadable_captions) == (8, 1, 1)
    assert len(dataset) == 10
    (batch,) = take(dataset, cfg(batch_size=10), 0, 1)
    assert len(batch["view1"]) == len(batch["text"]) == 6
    bad = sorted(batch["bad"])
    assert len(bad) == 4
    assert any("badjson" in m and "bad JSON" in m for m in bad)
    assert any("nocap" in m and "no caption" in m for m in bad)
    assert any("noimage" in m and "no image" in m for m in bad)
    assert any("broken.jpg" in m and "cannot read image" in m for m in bad)
    # Distillation needs no caption: only the two without a usable image are bad.
    (batch,) = take(ShardDataset(damaged, views=views(), seed=0), cfg(batch_size=10), 0, 1)
    assert len(batch["view1"]) == 8 and len(batch["bad"]) == 2


def test_damaged_or_missing_shards_are_one_line_errors(shards, tmp_path):
    data = (shards / "000001.tar").read_bytes()
    for cut in (len(data) // 2, len(data) // 2 + 700):  # after a member, in one
        (tmp_path / "cut.tar").write_bytes(data[:cut])
        with pytest.raises(DataError, match=r"shard .*cut.tar (is damaged: truncated|.* \(unexpected end of data\))"):
            ShardDataset(tmp_path / "cut.tar", views=views(), seed=0)
    (tmp_path / "junk.tar").write_bytes(b"this is not a tar file at all" * 40)
    with pytest.raises(DataError, match=r"junk.tar is not a readable uncompressed tar"):
        ShardDataset(tmp_path / "junk.tar", views=views(), seed=0)


def test_too_few_samples_for_the_readers_is_one_line(shards):
    dataset = ShardDataset(shards, views=views(), seed=0)
    with pytest.raises(DataError, match="fewer than one batch of 8; use fewer --workers"):
        take(dataset, cfg(batch_size=16, workers=4), 0, 1, world_size=2)  # 8 readers of 4 samples


# ---------------------------------------------------------------- commands


def test_shard_command_and_its_refusals(folder, tmp_path, run_cli):
    out = tmp_path / "out"
    result = run_cli("shard", "--data", folder, "--out", out, "--samples-per-shard", "10")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "" and "done: 4 shards, 32 samples" in result.stderr
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert sorted(before) == ["000000.tar", "000001.tar", "000002.tar", "000003.tar", INDEX_FILE]

    result = run_cli("shard", "--data", folder, "--out", out)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: --out") and "--force" in result.stderr
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # untouched

    (out / "notes.md").write_text("mine")
    result = run_cli("shard", "--data", folder, "--out", out, "--force")
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in out.iterdir()) == sorted(["000000.tar", INDEX_FILE, "notes.md"])


def test_shard_command_names_unreadable_images_and_exits_1(tmp_path, run_cli):
    folder = make_folder(tmp_path / "in", n=6)
    (folder / "cat" / "img00.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    result = run_cli("shard", "--data", folder, "--out", tmp_path / "out")
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 2 and "img00.png" in errors[0] and "1 of 6 images" in errors[1]
    assert scan_shard(tmp_path / "out" / "000000.tar").samples == 5


@pytest.mark.slow
def test_pretrain_on_shards_and_resume(shards, tmp_path, run_cli):
    out = tmp_path / "run"
    spec = f"{shards}/{{000000..000001}}.tar"
    result = run_cli("pretrain", "--data", spec, "--preset", "tiny", "--steps", "3", "--batch-size", "8",
                     "--out", out, "--device", "cpu")
    assert result.returncode == 0, result.stderr
    for name in ("model.safetensors", "config.json", "train_state.safetensors", "metrics.jsonl", "run.json"):
        assert (out / name).exists(), name
    assert json.loads((out / "run.json").read_text())["data_report"]["samples"] == 16
    result = run_cli("pretrain", "--resume", out, "--steps", "5")
    assert result.returncode == 0, result.stderr
    assert [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()][-1] == 5


def test_pretrain_on_a_damaged_shard_skips_and_counts(damaged, tmp_path, run_cli):
    out = tmp_path / "run"
    result = run_cli("pretrain", "--data", damaged, "--preset", "tiny", "--steps", "2", "--batch-size", "5",
                     "--out", out, "--device", "cpu", "--log-every", "1", "--max-bad-fraction", "0.5")
    assert result.returncode == 0, result.stderr
    assert "missing_images" in result.stderr  # the data line
    assert json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])["bad_samples"] == 4


@pytest.mark.slow
def test_distill_on_shards(shards, tmp_path, run_cli):
    """Distillation streams the shards (all 32 samples of the 4 shards counted, none bad) with
    its local crops, and its steps change the student."""
    out = tmp_path / "run"
    result = run_cli("distill", "--data", shards, "--steps", "2", "--batch-size", "8", "--local-crops", "2",
                     "--out", out, "--device", "cpu", "--log-every", "1")
    assert result.returncode == 0, result.stderr
    run = json.loads((out / "run.json").read_text())
    assert run["data"] == str(shards) and run["local_crops"] == 2
    assert run["data_report"]["samples"] == 32
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2] and all(r["bad_samples"] == 0 for r in rows)
    assert all(math.isfinite(r["loss"]) and r["loss"] > 0 for r in rows)
    # The saved student is not the one it started from (seeded alike, so step 0 is reproducible).
    from detailclip_cli.core.config import load_preset
    from detailclip_cli.core.device import seed_everything
    from detailclip_cli.core.model.detailclip import DetailCLIP
    from detailclip_cli.core.store.io import load_tensors

    trained = load_tensors(out / "model.safetensors")
    seed_everything(run["train"]["seed"])
    start = DetailCLIP(load_preset("tiny")[0]).state_dict()
    # The text tower is not trained: equal to the seeded start, which shows the start is known ...
    assert all(torch.equal(trained[k], start[k]) for k in trained if k.startswith("text."))
    # ... and the image tower's weights moved from it.
    moved = [k for k in trained if k.startswith("visual.") and not torch.equal(trained[k], start[k])]
    assert len(moved) > len([k for k in trained if k.startswith("visual.")]) // 2, moved


def test_shard_options_are_one_line_errors(shards, folder, tmp_path, run_cli):
    result = run_cli("pretrain", "--data", f"{shards}/{{000000..000009}}.tar", "--steps", "1", "--out", tmp_path / "x")
    assert result.returncode == 2 and result.stderr.startswith("error: shard not found") and result.stderr.count("\n") == 1
    result = run_cli("pretrain", "--data", folder, "--samples-per-epoch", "100", "--steps", "1", "--out", tmp_path / "y")
    assert result.returncode == 2 and "--samples-per-epoch is for tar shards" in result.stderr
