"""Contracts of the data layer: demo set, readers, image loading, transforms and datasets."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from detailclip_cli.core.data import demo_photos
from detailclip_cli.core.data import (
    DEMO_VERSION,
    AugmentConfig,
    DataError,
    EvalDataset,
    Sample,
    TwoViewDataset,
    class_names,
    demo,
    demo_root,
    generate_demo,
    load_image,
    make_eval_transform,
    make_view_transform,
    read_samples,
)

MEAN = (0.5, 0.5, 0.5)
STD = (0.25, 0.25, 0.25)
COLOURS = ["red", "green", "blue", "yellow", "white", "black", "orange", "purple"]
PATTERNS = ["striped", "dotted", "checkered", "plain"]


@pytest.fixture(scope="session")
def demo_cache(tmp_path_factory):
    """Generate the demo set once and point ``DETAILCLIP_CACHE`` at it for the whole session."""
    cache = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DETAILCLIP_CACHE", str(cache))
        demo_root()
        yield cache


def _tree_digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _write_png(path: Path, colour=(200, 10, 10), size=(20, 16)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)
    return path


# ---------------------------------------------------------------- demo set


def test_demo_layout_and_sizes(demo_cache):
    root = demo_root()
    assert root == demo_cache / DEMO_VERSION == demo_cache / "demo-v6"
    assert json.loads((root / "classes.json").read_text()) == PATTERNS
    for split, size in [("train", 2000), ("val", 500)]:
        images = [p for p in (root / split).rglob("*.png") if not p.name.endswith(".mask.png")]
        assert len(images) == size
        assert {p.parent.name: 0 for p in images}.keys() == set(PATTERNS)
        # Image j shows pattern j % 4, so the classes are balanced exactly.
        assert all(sum(p.parent.name == c for p in images) == size // 4 for c in PATTERNS)
        for p in images:
            assert p.with_suffix(".txt").is_file()
            assert p.with_name(p.stem + ".mask.png").is_file()


def test_demo_masks_cover_each_object_and_nothing_else(demo_cache):
    """Each object is painted over the photo, marked with its class in the mask, spans at least
    2 x 2 patches of the tiny preset (8 px; the smallest ellipse is 17 px across), and the mask
    is 0 everywhere else."""
    root = demo_root()
    counts = []
    for split in ("train", "val"):
        records = [json.loads(line) for line in (root / f"{split}.jsonl").read_text().splitlines()]
        for record in records[:: 5 if split == "train" else 1]:
            folder = root / split / record["label"]
            image = Image.open(folder / f"{record['id']}.png")
            mask = np.asarray(Image.open(folder / f"{record['id']}.mask.png"))
            assert image.mode == "RGB" and image.size == (64, 64) and mask.shape == (64, 64)
            k = PATTERNS.index(record["label"]) + 1
            assert set(np.unique(mask).tolist()) == {0, k}, record
            covered = np.zeros_like(mask, dtype=bool)
            for obj in record["objects"]:
                x0, y0, x1, y1 = obj["box"]
                inside = mask[y0:y1, x0:x1] == k
                rows, cols = np.flatnonzero(inside.any(1)), np.flatnonzero(inside.any(0))
                assert rows[-1] - rows[0] + 1 >= 16 and cols[-1] - cols[0] + 1 >= 16, (record, obj)
                covered[y0:y1, x0:x1] |= inside
            assert ((mask == k) == covered).all(), record  # no object pixel outside the boxes
            counts.append(len(record["objects"]))
            caption = (folder / f"{record['id']}.txt").read_text().strip()
            assert caption == record["caption"] and record["label"] in caption
    assert set(counts) == {1, 2}  # two in about one image of eight (they must not overlap)


def test_demo_patterns_are_two_coloured_and_colours_do_not_give_the_class(demo_cache):
    """Plain objects have one colour, the others two; every palette colour paints every class."""
    root = demo_root()
    used = {c: set() for c in PATTERNS}
    for line in (root / "train.jsonl").read_text().splitlines():
        record = json.loads(line)
        for obj in record["objects"]:
            assert len(obj["colours"]) == (1 if record["label"] == "plain" else 2)
            assert len(set(obj["colours"])) == len(obj["colours"])
            used[record["label"]].update(obj["colours"])
    assert all(colours == set(demo_photos.COLOURS) for colours in used.values()), used


def test_demo_val_photos_unseen_in_train(demo_cache):
    root = demo_root()
    photos = {}
    for split in ("train", "val"):
        lines = (root / f"{split}.jsonl").read_text().splitlines()
        photos[split] = {json.loads(line)["background"] for line in lines}
    assert photos["val"] == {"chelsea", "coffee"}
    assert len(photos["train"]) == 8 and not photos["train"] & photos["val"]


def _pixel_digest(root: Path) -> str:
    """Over every file: its path, and its decoded pixels for PNGs (not the encoder's bytes), else its bytes."""
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(root)).encode())
            h.update(np.asarray(Image.open(p)).tobytes() if p.suffix == ".png" else p.read_bytes())
    return h.hexdigest()


def test_demo_v5_is_still_the_one_0_1_generated(tmp_path):
    """``--data demo:v5`` reproduces old figures: its first images are those detailclip 0.1 wrote
    (this digest was computed from 0.1's generator)."""
    generate_demo(tmp_path, version="v5", sizes={"train": 20, "val": 10})
    assert json.loads((tmp_path / "classes.json").read_text()) == COLOURS
    assert _pixel_digest(tmp_path) == "864a6ba5869d1bdab015e243b47ce6dd7219fe49257075a5ac392f59822c46e7"


def test_demo_versions_by_spec():
    assert demo.demo_version("demo") == "v6" and demo.demo_version("demo:v5") == "v5"
    assert demo.demo_version("./demo") is None and demo.demo_version("demos") is None
    with pytest.raises(DataError, match="demo versions are v5, v6"):
        demo.demo_version("demo:v9")


def test_demo_generation_is_deterministic(demo_cache, tmp_path):
    """A second generation (of a prefix, to stay fast) reproduces the cached files byte for byte."""
    generate_demo(tmp_path, sizes={"train": 60, "val": 20})
    full = demo_root()
    fresh = _tree_digest(tmp_path)
    assert sum(name.endswith(".png") for name in fresh) == 2 * (60 + 20)
    for name, digest in fresh.items():
        if name.endswith(".jsonl"):
            assert (full / name).read_text().startswith((tmp_path / name).read_text())
        else:
            assert digest == hashlib.sha256((full / name).read_bytes()).hexdigest(), name


def test_demo_root_tolerates_a_lost_race(tmp_path, monkeypatch):
    """When another process renames its copy into place first, ours is discarded, not merged."""

    def fake_generate(out_dir, **_):
        (Path(out_dir) / "ours.txt").write_text("ours")
        winner = tmp_path / DEMO_VERSION
        winner.mkdir()
        (winner / "theirs.txt").write_text("theirs")

    monkeypatch.setattr(demo, "generate_demo", fake_generate)
    root = demo_root(tmp_path)
    assert sorted(p.name for p in root.iterdir()) == ["theirs.txt"]
    assert [p.name for p in tmp_path.iterdir()] == [DEMO_VERSION]  # no temp folder left behind


# ---------------------------------------------------------------- readers


def test_read_demo(demo_cache):
    train = read_samples("demo")
    val = read_samples("demo", split="val")
    assert len(train) == 2000 and len(val) == 500
    assert train == sorted(train, key=lambda s: s.image)
    assert all(s.label == s.image.parent.name and s.mask is not None for s in train)
    assert class_names("demo") == PATTERNS
    with pytest.raises(DataError, match="splits"):
        read_samples("demo", split="test")


def test_read_caption_folder(tmp_path):
    for name in ["b", "a"]:
        _write_png(tmp_path / f"{name}.PNG")
        (tmp_path / f"{name}.txt").write_text(f"caption {name}\n")
    _write_png(tmp_path / "a.mask.png")  # a mask is never an image
    samples = read_samples(tmp_path)
    assert [s.image.name for s in samples] == ["a.PNG", "b.PNG"]
    assert [s.caption for s in samples] == ["caption a", "caption b"]
    assert samples[0].mask == tmp_path / "a.mask.png" and samples[1].mask is None
    assert all(s.label is None for s in samples)
    assert class_names(tmp_path) == []


def test_read_caption_folder_with_class_subfolders(tmp_path):
    for cls, name in [("dog", "x"), ("cat", "y")]:
        _write_png(tmp_path / cls / f"{name}.jpg")
        (tmp_path / cls / f"{name}.txt").write_text(f"a {cls}")
    samples = read_samples(tmp_path)
    assert [(s.label, s.caption) for s in samples] == [("cat", "a cat"), ("dog", "a dog")]


def test_read_class_folders(tmp_path):
    for cls in ["golden_retriever", "cat"]:
        for i in range(2):
            _write_png(tmp_path / cls / f"{i}.png")
    (tmp_path / "empty").mkdir()
    samples = read_samples(tmp_path, class_template="a photo of a {}.")
    assert [s.label for s in samples] == ["cat", "cat", "golden_retriever", "golden_retriever"]
    assert samples[-1].caption == "a photo of a golden retriever."
    assert class_names(tmp_path) == ["cat", "golden_retriever"]


def test_read_split_subfolder(tmp_path):
    _write_png(tmp_path / "train" / "cat" / "0.png")
    _write_png(tmp_path / "val" / "dog" / "0.png")
    assert [s.label for s in read_samples(tmp_path, split="val")] == ["dog"]


@pytest.mark.parametrize("suffix, sep", [(".csv", ","), (".tsv", "\t"), (".csv", ";")])
def test_read_table(tmp_path, suffix, sep):
    _write_png(tmp_path / "img" / "a.png")
    absolute = _write_png(tmp_path / "elsewhere" / "b.png")
    table = tmp_path / f"data{suffix}"
    rows = [["path", "text", "kind"], ["img/a.png", "first, caption", "x"], [str(absolute), "second", "y"]]
    with open(table, "w", newline="") as f:
        for row in rows:
            f.write(sep.join(f'"{c}"' if sep in c else c for c in row) + "\n")
    samples = read_samples(table, image_column="path", caption_column="text", label_column="kind")
    assert samples == [
        Sample(image=tmp_path / "img" / "a.png", caption="first, caption", label="x"),
        Sample(image=absolute, caption="second", label="y"),
    ]
    assert class_names(table, image_column="path", caption_column="text", label_column="kind") == ["x", "y"]


def test_read_table_missing_column_lists_columns(tmp_path):
    table = tmp_path / "data.csv"
    table.write_text("path,text\na.png,hello\n")
    with pytest.raises(DataError) as info:
        read_samples(table)  # default columns: filepath, title
    message = str(info.value)
    assert "'filepath'" in message and "'path'" in message and "'text'" in message
    assert "\n" not in message


def _missing(p: Path) -> Path:
    return p / "missing"


def _empty_folder(p: Path) -> Path:
    (p / "empty").mkdir()
    return p / "empty"


def _folder_without_images(p: Path) -> Path:
    (p / "notes").mkdir()
    (p / "notes" / "x.txt").write_text("hi")
    return p / "notes"


def _loose_images_without_captions(p: Path) -> Path:
    return _write_png(p / "loose" / "a.png").parent


@pytest.mark.parametrize(
    "make, pattern",
    [
        (_missing, "does not exist"),
        (_empty_folder, "empty"),
        (_folder_without_images, "no images"),
        (_loose_images_without_captions, "neither .txt captions nor class"),
    ],
)
def test_read_errors(tmp_path, make, pattern):
    with pytest.raises(DataError, match=pattern) as info:
        read_samples(make(tmp_path))
    assert "\n" not in str(info.value)


# ---------------------------------------------------------------- load_image


def _save(image: Image.Image, path: Path, **kwargs) -> Path:
    image.save(path, **kwargs)
    return path


@pytest.mark.parametrize(
    "make",
    [
        lambda p: _save(Image.new("RGBA", (30, 20), (10, 20, 30, 0)), p / "a.png"),
        lambda p: _save(Image.new("RGB", (30, 20), (1, 2, 3)).convert("P"), p / "p.png"),
        lambda p: _save(Image.new("L", (30, 20), 77), p / "l.png"),
        lambda p: _save(Image.new("CMYK", (30, 20), (0, 255, 255, 0)), p / "c.jpg"),
        lambda p: _save(Image.new("CMYK", (30, 20), (0, 255, 255, 0)), p / "c.tiff"),
        lambda p: _save(Image.fromarray(np.full((20, 30), 4000, np.uint16)), p / "i16.png"),
    ],
)
def test_load_image_modes(tmp_path, make):
    image = load_image(make(tmp_path))
    assert image.mode == "RGB" and image.size == (30, 20)


def test_load_image_transparent_is_white(tmp_path):
    path = _save(Image.new("RGBA", (4, 4), (10, 20, 30, 0)), tmp_path / "a.png")
    assert load_image(path).getpixel((0, 0)) == (255, 255, 255)


def test_load_image_applies_exif_rotation(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    path = _save(Image.new("RGB", (30, 20), (0, 0, 255)), tmp_path / "r.jpg", exif=exif)
    assert Image.open(path).size == (30, 20)
    assert load_image(path).size == (20, 30)


def test_load_image_error_names_file(tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not an image")
    with pytest.raises(DataError, match="broken.png"):
        load_image(bad)
    with pytest.raises(DataError, match="gone.png"):
        load_image(tmp_path / "gone.png")


# ---------------------------------------------------------------- transforms and datasets


def test_augment_config_for_small_images():
    small, large = AugmentConfig.for_image_size(64), AugmentConfig.for_image_size(224)
    assert large == AugmentConfig()
    assert small.crop_scale[0] > large.crop_scale[0]
    assert small.blur_sigma[1] < large.blur_sigma[1]
    with pytest.raises(ValueError):
        AugmentConfig(blur=(1.5, 0.1))


def test_default_views_are_the_authors_no_flip_and_symmetric_blur_and_solarize():
    from detailclip_cli.core.config import TrainConfig
    from detailclip_cli.core.training.trainset import train_augment

    aug = AugmentConfig()
    assert (aug.hflip, aug.blur, aug.solarize) == (0.0, (0.1, 0.1), (0.2, 0.2))
    train = TrainConfig()
    assert (train.hflip, train.blur, train.solarize) == (aug.hflip, aug.blur, aug.solarize)
    for view in (1, 2):
        steps = make_view_transform(image_size=224, mean=MEAN, std=STD, aug=aug, view=view)
        assert (steps.hflip, steps.blur_p, steps.solarize_p) == (0.0, 0.1, 0.2), view
    # a run's settings reach the views
    asked = train_augment(224, chiral=False, cfg=TrainConfig(hflip=0.5, blur=(1.0, 0.1), solarize=(0.0, 0.2)))
    assert (asked.hflip, asked.blur, asked.solarize) == (0.5, (1.0, 0.1), (0.0, 0.2))
    assert AugmentConfig.for_image_size(64, hflip=0.3).hflip == 0.3


def test_view_and_eval_transforms_shapes():
    image = Image.new("RGB", (50, 30), (120, 60, 30))
    for view in (1, 2):
        out = make_view_transform(image_size=24, mean=MEAN, std=STD, aug=AugmentConfig(), view=view)(image)
        assert out.shape == (3, 24, 24) and out.dtype == torch.float32
    out = make_eval_transform(image_size=24, mean=MEAN, std=STD)(image)
    assert out.shape == (3, 24, 24)
    expected = (torch.tensor([120, 60, 30]) / 255 - torch.tensor(MEAN)) / torch.tensor(STD)
    torch.testing.assert_close(out[:, 12, 12], expected, atol=1e-2, rtol=0)


@pytest.fixture
def small_samples(demo_cache):
    return read_samples("demo", split="val")[::50]


def test_two_view_dataset(small_samples):
    def tokenize(texts):
        return torch.tensor([[len(t), 1, 2, 0] for t in texts])

    ds = TwoViewDataset(
        small_samples,
        image_size=32,
        mean=MEAN,
        std=STD,
        aug=AugmentConfig.for_image_size(32),
        tokenize=tokenize,
        seed=3,
    )
    torch.manual_seed(123)
    state = torch.get_rng_state()
    first = ds[4]
    assert torch.equal(torch.get_rng_state(), state)  # the caller's RNG is untouched
    assert first["view1"].shape == first["view2"].shape == (3, 32, 32)
    assert first["text"].shape == (4,) and first["text"].dtype == torch.long
    assert first["index"].dtype == torch.long and first["index"].ndim == 0 and first["index"] == 4
    assert not torch.equal(first["view1"], first["view2"])

    torch.manual_seed(999)  # a different global state must not matter either
    again = ds[4]
    assert all(torch.equal(first[k], again[k]) for k in first)

    ds.set_epoch(1)
    assert not torch.equal(ds[4]["view1"], first["view1"])
    ds.set_epoch(0)
    assert torch.equal(ds[4]["view1"], first["view1"])

    no_text = TwoViewDataset(
        small_samples, image_size=32, mean=MEAN, std=STD, aug=AugmentConfig(), tokenize=None, seed=3
    )
    assert "text" not in no_text[0]


def test_two_view_dataset_same_in_workers(small_samples):
    ds = TwoViewDataset(
        small_samples[:4], image_size=16, mean=MEAN, std=STD, aug=AugmentConfig(), tokenize=None, seed=0
    )
    loader = torch.utils.data.DataLoader(ds, batch_size=2, num_workers=2)
    batches = list(loader)
    direct = torch.stack([ds[i]["view1"] for i in range(4)])
    assert torch.equal(torch.cat([b["view1"] for b in batches]), direct)


def test_eval_dataset_on_demo(small_samples):
    ds = EvalDataset(small_samples, image_size=48, mean=MEAN, std=STD, classes=PATTERNS)
    for i in range(len(ds)):
        item = ds[i]
        assert item["image"].shape == (3, 48, 48)
        assert item["mask"].shape == (48, 48) and item["mask"].dtype == torch.long
        label = PATTERNS.index(small_samples[i].label)
        assert item["label"] == label
        assert set(item["mask"].unique().tolist()) <= {0, label + 1}
        assert (item["mask"] == label + 1).any()


def test_eval_dataset_mask_follows_crop(tmp_path):
    """A wide image is resized then centre-cropped; the mask must be cut the same way."""
    array = np.zeros((40, 80, 3), np.uint8)
    array[:, :40] = (255, 0, 0)  # left half red, class 1
    array[:, 40:] = (0, 0, 255)  # right half blue, class 2
    mask = np.where(np.arange(80) < 40, 1, 2).astype(np.uint8)[None].repeat(40, 0)
    image_path = _save(Image.fromarray(array), tmp_path / "wide.png")
    mask_path = _save(Image.fromarray(mask, mode="L"), tmp_path / "wide.mask.png")

    ds = EvalDataset(
        [Sample(image=image_path, caption="", mask=mask_path)], image_size=32, mean=(0, 0, 0), std=(1, 1, 1)
    )
    item = ds[0]
    assert "label" not in item
    red, blue = item["image"][0], item["image"][2]
    left, right = item["mask"] == 1, item["mask"] == 2
    assert left.sum() == right.sum() == 32 * 16  # the crop keeps the centre: half of each
    assert (red[left] > 0.9).all() and (blue[right] > 0.9).all()


def test_eval_dataset_without_mask(tmp_path):
    path = _write_png(tmp_path / "a.png")
    item = EvalDataset([Sample(image=path, caption="x")], image_size=8, mean=MEAN, std=STD)[0]
    assert set(item) == {"image", "index"}
