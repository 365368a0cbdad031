"""Semantic-segmentation layouts as distributed: ADE20K (SceneParse150), Pascal VOC 2012 and
Cityscapes (fine annotations, train ids).

=============  ==========================================================  ======================
layout         files                                                       labels
=============  ==========================================================  ======================
``ade20k``     ``ADEChallengeData2016/images/{training,validation}/*.jpg``  0 "other" (ignored),
               ``annotations/{training,validation}/*.png``,                 1..150 the classes
               ``objectInfo150.csv`` (optional)
``voc``        ``JPEGImages/*.jpg``, palette-mode ``SegmentationClass/*.png``  0 background, 1..20,
               ``ImageSets/Segmentation/{train,val}.txt``                   255 boundary (ignored)
``cityscapes`` ``leftImg8bit/{train,val}/CITY/*_leftImg8bit.png``           0..18 the train classes,
               ``gtFine/{train,val}/CITY/*_gtFine_labelTrainIds.png``       255 (ignored)
=============  ==========================================================  ======================
"""

from __future__ import annotations

import csv
from pathlib import Path

from detailclip_cli.core.data.benchmarks.evalset import EvalItem, EvalSet, MaskCoding
from detailclip_cli.core.data.benchmarks.splits import layout_split
from detailclip_cli.core.data.samples import DataError, printable

# The 150 SceneParse150 classes in id order (label k + 1), short names as segmentation toolkits print them.
ADE20K_CLASSES = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass", "cabinet",
    "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair", "car", "water",
    "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field", "armchair", "seat", "fence", "desk",
    "rock", "wardrobe", "lamp", "bathtub", "railing", "cushion", "base", "box", "column", "signboard",
    "chest of drawers", "counter", "sand", "sink", "skyscraper", "fireplace", "refrigerator", "grandstand",
    "path", "stairs", "runway", "case", "pool table", "pillow", "screen door", "stairway", "river", "bridge",
    "bookcase", "blind", "coffee table", "toilet", "flower", "book", "hill", "bench", "countertop", "stove",
    "palm", "kitchen island", "computer", "swivel chair", "boat", "bar", "arcade machine", "hovel", "bus",
    "towel", "light", "truck", "tower", "chandelier", "awning", "streetlight", "booth", "television receiver",
    "airplane", "dirt track", "apparel", "pole", "land", "bannister", "escalator", "ottoman", "bottle",
    "buffet", "poster", "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer", "plaything",
    "swimming pool", "stool", "barrel", "basket", "waterfall", "tent", "bag", "minibike", "cradle", "oven",
    "ball", "food", "step", "tank", "trade name", "microwave", "pot", "animal", "bicycle", "lake",
    "dishwasher", "screen", "blanket", "sculpture", "hood", "sconce", "vase", "traffic light", "tray",
    "ashcan", "fan", "pier", "crt screen", "plate", "monitor", "bulletin board", "shower", "radiator",
    "glass", "clock", "flag",
)
VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)
CITYSCAPES_CLASSES = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation",
    "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle",
)

ADE20K_EXPECTS = "ADEChallengeData2016/ with images/{training,validation}/*.jpg and annotations/{training,validation}/*.png"
VOC_EXPECTS = "JPEGImages/, SegmentationClass/*.png and ImageSets/Segmentation/{train,val}.txt (VOC2012/)"
CITYSCAPES_EXPECTS = "leftImg8bit/{train,val}/CITY/*_leftImg8bit.png and gtFine/{train,val}/CITY/*_gtFine_labelTrainIds.png"


# ------------------------------------------------------------------------------------------ ADE20K


def ade20k_root(path: Path) -> Path | None:
    """The ``ADEChallengeData2016`` folder at or just under ``path``, or None."""
    for root in (path, path / "ADEChallengeData2016"):
        if (root / "images").is_dir() and (root / "annotations").is_dir() \
                and any((root / "images" / s).is_dir() for s in ("training", "validation")):
            return root
    return None


def read_ade20k(path: Path, split: str | None = None) -> EvalSet:
    """One split of ADE20K: each image with the same-named ``.png`` label map; classes from
    ``objectInfo150.csv`` when present (its ``Name`` column, first synonym), else the standard 150."""
    root = ade20k_root(path)
    if root is None:
        raise DataError(f"{printable(path)} is not an ADE20K folder (expected {ADE20K_EXPECTS})")
    name = layout_split("ade20k", split, {"train": "training", "val": "validation"}, "validation")
    images = sorted(p for p in (root / "images" / name).glob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    labels = root / "annotations" / name
    return _paired("ade20k", name, root, images, lambda im: labels / f"{im.stem}.png",
                   classes=ade20k_classes(root), coding=MaskCoding(reduce_zero_label=True))


def ade20k_classes(root: Path) -> list[str]:
    """The class names of ``objectInfo150.csv`` (columns ``Idx, Ratio, Train, Val, Name``), in ``Idx``
    order; the standard names when the file is absent or not of that form."""
    table = root / "objectInfo150.csv"
    if table.is_file():
        try:
            with open(table, newline="", encoding="utf-8") as f:
                rows = sorted((int(r["Idx"]), r["Name"]) for r in csv.DictReader(f))
        except (OSError, KeyError, ValueError, TypeError):
            rows = []
        if [i for i, _ in rows] == list(range(1, len(ADE20K_CLASSES) + 1)):
            return [n.split(";")[0].strip() for _, n in rows]
    return list(ADE20K_CLASSES)


# ------------------------------------------------------------------------------------------ VOC


def voc_root(path: Path) -> Path | None:
    """The ``VOC2012`` folder at ``path`` (or ``VOC2012/`` / ``VOCdevkit/VOC2012/`` under it), or None."""
    for root in (path, path / "VOC2012", path / "VOCdevkit" / "VOC2012"):
        if (root / "JPEGImages").is_dir() and (root / "SegmentationClass").is_dir() \
                and (root / "ImageSets" / "Segmentation").is_dir():
            return root
    return None


def read_voc(path: Path, split: str | None = None) -> EvalSet:
    """One split of Pascal VOC 2012 segmentation: the ids of ``ImageSets/Segmentation/<split>.txt``,
    ``JPEGImages/<id>.jpg`` with ``SegmentationClass/<id>.png`` (palette indices are the class ids)."""
    root = voc_root(path)
    if root is None:
        raise DataError(f"{printable(path)} is not a Pascal VOC folder (expected {VOC_EXPECTS})")
    name = layout_split("voc", split, {"train": "train", "val": "val"}, "val")
    listing = root / "ImageSets" / "Segmentation" / f"{name}.txt"
    if not listing.is_file():
        raise DataError(f"{printable(listing)} is missing: the VOC split {name!r} is listed there")
    ids = [line.split()[0] for line in listing.read_text(encoding="utf-8").splitlines() if line.strip()]
    images = [root / "JPEGImages" / f"{i}.jpg" for i in ids]
    return _paired("voc", name, root, images, lambda im: root / "SegmentationClass" / f"{im.stem}.png",
                   classes=list(VOC_CLASSES), coding=MaskCoding())


# ------------------------------------------------------------------------------------------ Cityscapes


def cityscapes_root(path: Path) -> Path | None:
    """``path`` when it holds ``leftImg8bit/`` and ``gtFine/``, or None."""
    return path if (path / "leftImg8bit").is_dir() and (path / "gtFine").is_dir() else None


def read_cityscapes(path: Path, split: str | None = None) -> EvalSet:
    """One split of Cityscapes: each ``*_leftImg8bit.png`` with its ``*_gtFine_labelTrainIds.png``
    (made by cityscapesScripts' ``createTrainIdLabelImgs``), the 19 train classes, 255 ignored."""
    root = cityscapes_root(path)
    if root is None:
        raise DataError(f"{printable(path)} is not a Cityscapes folder (expected {CITYSCAPES_EXPECTS})")
    name = layout_split("cityscapes", split, {"train": "train", "val": "val", "test": "test"}, "val")
    images = sorted((root / "leftImg8bit" / name).glob("*/*_leftImg8bit.png"))

    def label_of(image: Path) -> Path:
        stem = image.name[: -len("_leftImg8bit.png")]
        return root / "gtFine" / name / image.parent.name / f"{stem}_gtFine_labelTrainIds.png"

    return _paired("cityscapes", name, root, images, label_of, classes=list(CITYSCAPES_CLASSES), coding=MaskCoding())


# ------------------------------------------------------------------------------------------ shared


def _paired(layout: str, split: str, root: Path, images: list[Path], label_of, *, classes: list[str],
            coding: MaskCoding) -> EvalSet:
    """Images with their label maps; an image without one is left out and counted."""
    if not images:
        raise DataError(f"no images in the {layout} split {split!r} under {printable(root)}")
    items, missing = [], []
    for image in images:
        label = label_of(image)
        if label.is_file():
            items.append(EvalItem(image=image, mask=label))
        else:
            missing.append(label)
    if not items:
        raise DataError(f"none of the {len(images)} images of the {layout} split {split!r} has its label map, "
                        f"e.g. {printable(missing[0])}")
    notes = {"images_without_label_map": len(missing)} if missing else {}
    return EvalSet(layout=layout, split=split, root=root, items=items, mask_classes=classes, mask_coding=coding,
                   notes=notes)
