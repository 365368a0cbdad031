"""Miniatures of the evaluation layouts, written exactly as each is distributed (file names, palette
PNGs, ignore values, JSON schemas, tar members), a handful of images each.

Each image is one flat colour per class (so a probe can tell classes apart on any model), with
the label map's ignore value on a border stripe where the layout has one.
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

COLOURS = [(220, 30, 30), (30, 200, 40), (40, 60, 230)]


def _image(colour, size=(40, 48)) -> Image.Image:
    """A flat ``colour`` image of ``size`` (width, height) with a little noise."""
    rng = np.random.default_rng(sum(colour))
    w, h = size
    arr = np.clip(np.array(colour)[None, None] + rng.integers(-8, 9, (h, w, 3)), 0, 255).astype(np.uint8)
    return Image.fromarray(arr)


def _label(value: int, size=(40, 48), ignore: int | None = None) -> np.ndarray:
    w, h = size
    lab = np.full((h, w), value, dtype=np.uint8)
    if ignore is not None:
        lab[:, :3] = ignore  # a border stripe no metric counts
    return lab


def ade20k(root: Path, per_split: int = 6) -> Path:
    """``ADEChallengeData2016/`` with ``objectInfo150.csv``; labels 1..3 (0 = other on a stripe)."""
    base = root / "ADEChallengeData2016"
    for split, prefix in (("training", "ADE_train"), ("validation", "ADE_val")):
        (base / "images" / split).mkdir(parents=True)
        (base / "annotations" / split).mkdir(parents=True)
        for i in range(per_split):
            k = i % 3
            _image(COLOURS[k]).save(base / "images" / split / f"{prefix}_{i + 1:08d}.jpg", quality=95)
            Image.fromarray(_label(k + 1, ignore=0), mode="L").save(base / "annotations" / split / f"{prefix}_{i + 1:08d}.png")
    rows = ["Idx,Ratio,Train,Val,Name"] + [f"{i},0.1,100,10,name{i};synonym" for i in range(1, 151)]
    (base / "objectInfo150.csv").write_text("\n".join(rows) + "\n")
    return base


def voc(root: Path, per_split: int = 6) -> Path:
    """``VOCdevkit/VOC2012`` with palette-mode ``SegmentationClass`` PNGs (255 = boundary)."""
    base = root / "VOCdevkit" / "VOC2012"
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (base / sub).mkdir(parents=True)
    palette = [0, 0, 0, 128, 0, 0, 0, 128, 0, 128, 128, 0] + [0] * (252 * 3 - 12) + [224, 224, 192] * 4
    for split in ("train", "val"):
        ids = [f"2007_{split}{i:04d}" for i in range(per_split)]
        for i, name in enumerate(ids):
            k = i % 3
            _image(COLOURS[k]).save(base / "JPEGImages" / f"{name}.jpg", quality=95)
            lab = Image.fromarray(_label(k + 1 if k else 0, ignore=255), mode="P")
            lab.putpalette(palette[:768])
            lab.save(base / "SegmentationClass" / f"{name}.png")
        (base / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("\n".join(ids) + "\n")
    return base


def cityscapes(root: Path, per_split: int = 6) -> Path:
    """``leftImg8bit`` / ``gtFine`` with ``*_gtFine_labelTrainIds.png`` (255 ignored)."""
    for split, city in (("train", "aachen"), ("val", "frankfurt")):
        (root / "leftImg8bit" / split / city).mkdir(parents=True)
        (root / "gtFine" / split / city).mkdir(parents=True)
        for i in range(per_split):
            k = i % 3
            stem = f"{city}_{i:06d}_000019"
            _image(COLOURS[k], (64, 32)).save(root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png")
            Image.fromarray(_label([0, 13, 10][k], (64, 32), ignore=255), mode="L").save(
                root / "gtFine" / split / city / f"{stem}_gtFine_labelTrainIds.png")
    return root


def coco(root: Path, images: int = 4) -> Path:
    """``annotations/captions_val2017.json`` (COCO schema) and ``val2017/``; 5 captions an image."""
    (root / "annotations").mkdir(parents=True)
    (root / "val2017").mkdir()
    entries, anns = [], []
    for i in range(images):
        name = f"{i + 1:012d}.jpg"
        _image(COLOURS[i % 3]).save(root / "val2017" / name)
        entries.append({"license": 1, "file_name": name, "coco_url": "", "height": 48, "width": 40,
                        "date_captured": "", "flickr_url": "", "id": i + 1})
        anns += [{"image_id": i + 1, "id": 100 * i + j, "caption": f"image {i} caption {j}"} for j in range(5)]
    (root / "annotations" / "captions_val2017.json").write_text(json.dumps(
        {"info": {}, "licenses": [], "images": entries, "annotations": anns}))
    return root


def karpathy(root: Path, images: int = 4) -> Path:
    """``dataset_flickr30k.json`` (Karpathy schema) beside ``flickr30k-images/``; 5 sentences an image."""
    (root / "flickr30k-images").mkdir(parents=True)
    entries = []
    for i in range(images):
        name = f"{1000 + i}.jpg"
        _image(COLOURS[i % 3]).save(root / "flickr30k-images" / name)
        entries.append({"sentids": list(range(5 * i, 5 * i + 5)), "imgid": i, "split": "test" if i < images - 1 else "train",
                        "filename": name, "sentences": [{"tokens": ["a"], "raw": f"Photo {i}, sentence {j}.", "imgid": i,
                                                         "sentid": 5 * i + j} for j in range(5)]})
    (root / "dataset_flickr30k.json").write_text(json.dumps({"images": entries, "dataset": "flickr30k"}))
    return root


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def clip_benchmark(root: Path, samples: list[tuple[bytes, str, int]], classes: list[str],
                   templates: list[str], per_shard: int = 3, split: str = "test") -> Path:
    """clip_benchmark's webdataset export: ``<split>/{0,1,..}.tar`` with ``key.<ext>`` + ``key.cls``,
    ``nshards.txt``, ``classnames.txt`` and ``zeroshot_classification_templates.txt`` (``{c}``)."""
    folder = root / split
    folder.mkdir(parents=True)
    shards = [samples[i:i + per_shard] for i in range(0, len(samples), per_shard)]
    for s, chunk in enumerate(shards):
        with tarfile.open(folder / f"{s}.tar", "w") as tar:
            for j, (data, ext, label) in enumerate(chunk):
                key = f"s{s * per_shard + j:07d}"
                _add(tar, f"{key}.{ext}", data)
                _add(tar, f"{key}.cls", str(label).encode())
    (folder / "nshards.txt").write_text(f"{len(shards)}\n")
    (root / "classnames.txt").write_text("\n".join(classes) + "\n")
    (root / "zeroshot_classification_templates.txt").write_text("\n".join(templates) + "\n")
    return root


def colour_clip_benchmark(root: Path, n: int = 7) -> Path:
    """A clip_benchmark miniature of flat colours: classes red, green, blue; ``.webp``/``.png``/``.jpg``."""
    samples = []
    for i in range(n):
        buf = io.BytesIO()
        ext = ("png", "webp", "jpg")[i % 3]
        _image(COLOURS[i % 3]).save(buf, format={"jpg": "JPEG"}.get(ext, ext.upper()))
        samples.append((buf.getvalue(), ext, i % 3))
    return clip_benchmark(root, samples, ["red", "green", "blue"], ["a photo of a {c}.", "a {c} thing."])


def imagenet(root: Path, wnids=("n01440764", "n01443537", "n01484850"), per_class: int = 2) -> Path:
    """An ImageNet-style ``val/`` (and ``train/``) of WordNet-id folders holding ``*.JPEG``."""
    for split in ("train", "val"):
        for k, wnid in enumerate(wnids):
            (root / split / wnid).mkdir(parents=True)
            for i in range(per_class):
                _image(COLOURS[k % 3]).save(root / split / wnid / f"ILSVRC2012_{split}_{k:04d}{i:04d}.JPEG", format="JPEG")
    return root
