"""Image-text retrieval layouts with several captions per image: COCO captions (2017) and the
Karpathy split files used for COCO and Flickr30k retrieval.

============  ===================================================================================
layout        files
============  ===================================================================================
``coco``      ``annotations/captions_{train,val}2017.json`` (``images[].{id,file_name}``,
              ``annotations[].{image_id,caption}``) and the image folders ``{train,val}2017/``
``karpathy``  ``dataset_coco.json`` / ``dataset_flickr30k.json`` (``images[].{filepath,filename,
              split,sentences[].raw}``) and the images: ``<filepath>/<filename>`` (COCO's
              ``val2014/``...) or ``flickr30k-images/<filename>`` / ``images/<filename>``
============  ===================================================================================
"""

from __future__ import annotations

import json
from pathlib import Path

from detailclip_cli.core.data.benchmarks.evalset import EvalItem, EvalSet
from detailclip_cli.core.data.benchmarks.splits import layout_split
from detailclip_cli.core.data.captions import clean_caption
from detailclip_cli.core.data.samples import DataError, one_line, printable

KARPATHY_FILES = ("dataset_coco.json", "dataset_flickr30k.json", "dataset_flickr8k.json")
COCO_EXPECTS = "annotations/captions_{train,val}2017.json and the image folders {train,val}2017/"
KARPATHY_EXPECTS = "dataset_coco.json or dataset_flickr30k.json (Karpathy's split) beside the images"


def _load_json(path: Path) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"cannot read {printable(path)}: {one_line(e)}") from None
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise DataError(f"{printable(path)} has no 'images' list")
    return data


def _captions(raw: list) -> tuple[str, ...]:
    texts = (clean_caption(r if isinstance(r, str) else "").text for r in raw)
    return tuple(t for t in texts if t)


# ------------------------------------------------------------------------------------------ COCO


def coco_root(path: Path) -> Path | None:
    """``path`` when ``annotations/captions_*2017.json`` is there, or None."""
    found = list((path / "annotations").glob("captions_*2017.json")) if (path / "annotations").is_dir() else []
    return path if found else None


def read_coco(path: Path, split: str | None = None) -> EvalSet:
    """One split of COCO captions: each image of ``captions_<split>.json`` with all its captions."""
    root = coco_root(path)
    if root is None:
        raise DataError(f"{printable(path)} is not a COCO folder (expected {COCO_EXPECTS})")
    name = layout_split("coco", split, {"train": "train2017", "val": "val2017"}, "val2017")
    data = _load_json(root / "annotations" / f"captions_{name}.json")
    captions: dict[int, list[str]] = {}
    for ann in data.get("annotations", []):
        if isinstance(ann, dict) and "image_id" in ann:
            captions.setdefault(ann["image_id"], []).append(ann.get("caption", ""))
    items, uncaptioned = [], 0
    for image in sorted(data["images"], key=lambda im: str(im.get("file_name", ""))):
        texts = _captions(captions.get(image.get("id"), []))
        if not texts:
            uncaptioned += 1
            continue
        items.append(EvalItem(image=root / name / str(image.get("file_name", "")), captions=texts))
    if not items:
        raise DataError(f"no captioned image in {printable(root / 'annotations' / f'captions_{name}.json')}")
    return EvalSet(layout="coco", split=name, root=root, items=items,
                   notes={"images_without_caption": uncaptioned} if uncaptioned else {})


# ------------------------------------------------------------------------------------------ Karpathy


def karpathy_file(path: Path) -> Path | None:
    """The Karpathy split file at ``path`` (a file, or a folder holding one), or None."""
    if path.is_file():
        return path if path.name in KARPATHY_FILES else None
    return next((path / f for f in KARPATHY_FILES if (path / f).is_file()), None)


def read_karpathy(path: Path, split: str | None = None) -> EvalSet:
    """One split of a Karpathy file (``test`` by default: the 5k COCO / 1k Flickr30k test images),
    each image with its sentences (usually five)."""
    file = karpathy_file(path)
    if file is None:
        raise DataError(f"{printable(path)} is not a Karpathy split (expected {KARPATHY_EXPECTS})")
    name = layout_split("karpathy", split, {"train": "train", "val": "val", "test": "test", "restval": "restval"},
                        "test")
    data = _load_json(file)
    chosen = [im for im in data["images"] if isinstance(im, dict) and im.get("split") == name]
    if not chosen:
        raise DataError(f"{printable(file)} has no image in the split {name!r}")
    base = file.parent
    folder = _image_folder(base, chosen[0])
    items = [EvalItem(image=folder / str(im.get("filepath", "")) / str(im.get("filename", "")),
                      captions=_captions([s.get("raw", "") for s in im.get("sentences", []) if isinstance(s, dict)]))
             for im in chosen]
    kept = [item for item in items if item.captions]
    notes = {"images_without_caption": len(items) - len(kept)} if len(kept) < len(items) else {}
    return EvalSet(layout="karpathy", split=name, root=file, items=kept, notes=notes)


def _image_folder(base: Path, first: dict) -> Path:
    """Where the images are: the first candidate folder holding the first image (else ``base``)."""
    rel = Path(str(first.get("filepath", ""))) / str(first.get("filename", ""))
    for folder in (base, base / "images", base / "flickr30k-images", base / "flickr8k-images", base / "Images"):
        if (folder / rel).is_file():
            return folder
    return base
