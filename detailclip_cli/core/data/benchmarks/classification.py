"""Classification layouts: clip_benchmark's webdataset export and an ImageNet-style folder.

==================  ===============================================================================
layout              files
==================  ===============================================================================
``clip_benchmark``  ``{train,test}/{0,1,...}.tar`` (each sample an image ``.webp`` / ``.png`` /
                    ``.jpg`` and its class id ``.cls``; ``nshards.txt`` optional),
                    ``classnames.txt`` and ``zeroshot_classification_templates.txt``, one per line;
                    a ``dataset_type.txt`` saying ``retrieval`` makes each sample's ``.txt`` (one
                    caption a line) its captions instead
``imagenet``        ``{train,val}/nXXXXXXXX/*.JPEG``: one folder per WordNet id of the 1000
                    ImageNet-1k classes; class ``k`` is the ``k``-th of the sorted ids, named as
                    open_clip names it, scored with OpenAI's 80 templates
==================  ===============================================================================
"""

from __future__ import annotations

import re
import tarfile
from pathlib import Path

from detailclip_cli.core.data.benchmarks.evalset import EvalItem, EvalSet, TarImage
from detailclip_cli.core.data.benchmarks.splits import layout_split
from detailclip_cli.core.data.captions import clean_caption
from detailclip_cli.core.data.samples import DataError, one_line, printable
from detailclip_cli.core.data.shards.index import image_ext, tar_groups
from detailclip_cli.core.data.walk import image_files

CLIP_BENCHMARK_EXPECTS = "test/*.tar (image + .cls per sample) with classnames.txt and zeroshot_classification_templates.txt"
IMAGENET_EXPECTS = "val/ (or train/) holding one folder per ImageNet WordNet id (n01440764/ ...)"
WNID = re.compile(r"n\d{8}")


# ------------------------------------------------------------------------------------------ clip_benchmark


def clip_benchmark_root(path: Path) -> Path | None:
    """``path`` when it has a split folder of ``.tar`` shards and ``classnames.txt`` or a
    ``dataset_type.txt``, or None."""
    if not ((path / "classnames.txt").is_file() or (path / "dataset_type.txt").is_file()):
        return None
    return path if any(any((path / s).glob("*.tar")) for s in ("test", "train") if (path / s).is_dir()) else None


def _lines(path: Path) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read {printable(path)}: {one_line(e)}") from None
    return [line.strip() for line in text.splitlines() if line.strip()]


def _shards(folder: Path) -> list[Path]:
    """The split's shards: ``0.tar .. n-1.tar`` per ``nshards.txt``, else every ``.tar``, numbers in order."""
    count = folder / "nshards.txt"
    if count.is_file():
        try:
            n = int(count.read_text().strip())
        except ValueError:
            raise DataError(f"{printable(count)} must hold one integer") from None
        return [folder / f"{i}.tar" for i in range(n)]
    return sorted(folder.glob("*.tar"), key=lambda p: (0, int(p.stem), "") if p.stem.isdigit() else (1, 0, p.stem))


def _member(shard: Path, member) -> bytes:
    with open(shard, "rb") as f:
        f.seek(member.offset)
        return f.read(member.size)


def read_clip_benchmark(path: Path, split: str | None = None) -> EvalSet:
    """One split of a clip_benchmark webdataset (``test`` by default). Only tar headers and the
    tiny ``.cls`` / ``.txt`` members are read here; images are read by offset when evaluated."""
    root = clip_benchmark_root(path)
    if root is None:
        raise DataError(f"{printable(path)} is not a clip_benchmark webdataset (expected {CLIP_BENCHMARK_EXPECTS})")
    name = layout_split("clip_benchmark", split, {"train": "train", "test": "test", "val": "test"}, "test")
    kind = _lines(root / "dataset_type.txt")[0].lower() if (root / "dataset_type.txt").is_file() else "classification"
    retrieval = kind == "retrieval"
    if kind not in ("classification", "retrieval"):
        raise DataError(f"{printable(root)}: dataset type {kind!r} is not supported (classification or retrieval)")
    classes = None if retrieval else _lines(root / "classnames.txt") if (root / "classnames.txt").is_file() else None
    if not retrieval and not classes:
        raise DataError(f"{printable(root / 'classnames.txt')} is missing or empty")
    templates = None
    if (root / "zeroshot_classification_templates.txt").is_file():
        # clip_benchmark's templates write the class as {c}; ours as {}.
        templates = [t.replace("{c}", "{}") for t in _lines(root / "zeroshot_classification_templates.txt")]
    folder = root / name
    shards = _shards(folder) if folder.is_dir() else []
    if not shards:
        raise DataError(f"no .tar shards in {printable(folder)}")
    items, unlabelled = [], 0
    for shard in shards:
        try:
            with tarfile.open(shard, "r:") as tar:
                groups = list(tar_groups(tar))
        except (OSError, tarfile.TarError) as e:
            raise DataError(f"cannot read shard {printable(shard)}: {one_line(e)}") from None
        for key, members in groups:
            ext = image_ext(members)
            target = members.get("txt" if retrieval else "cls")
            if ext is None or target is None:
                unlabelled += 1
                continue
            raw = _member(shard, target).decode("utf-8", "replace")
            image = TarImage(shard, members[ext].offset, members[ext].size, f"{shard.name}:{key}.{ext}")
            if retrieval:
                captions = tuple(t for t in (clean_caption(c).text for c in raw.splitlines()) if t)
                items.append(EvalItem(image=image, captions=captions))
                continue
            try:
                label = int(raw.strip())
            except ValueError:
                raise DataError(f"{shard.name}:{key}.cls holds {raw.strip()[:20]!r}, not a class id") from None
            if not 0 <= label < len(classes):
                raise DataError(f"{shard.name}:{key}.cls is {label}, outside the {len(classes)} classes")
            items.append(EvalItem(image=image, label=label))
    if not items:
        raise DataError(f"no usable sample in the shards of {printable(folder)}")
    return EvalSet(layout="clip_benchmark", split=name, root=root, items=items, classes=classes,
                   templates=templates, notes={"samples_without_label": unlabelled} if unlabelled else {})


# ------------------------------------------------------------------------------------------ ImageNet


def imagenet_wnids() -> list[str]:
    """The 1000 ImageNet-1k WordNet ids, sorted: class ``k`` of every ImageNet-1k model is the ``k``-th."""
    from timm.data import ImageNetInfo  # heavy import, only when ImageNet is read

    return list(ImageNetInfo("imagenet-1k").label_names())


def imagenet_names() -> list[str]:
    """open_clip's names of the 1000 classes, in the order of :func:`imagenet_wnids`."""
    import open_clip  # heavy import, only when ImageNet is read

    return list(open_clip.IMAGENET_CLASSNAMES)


def _wnid_folders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and WNID.fullmatch(p.name)) if folder.is_dir() else []


def imagenet_root(path: Path) -> Path | None:
    """``path`` when it (or its ``val/`` / ``train/``) holds WordNet-id folders and nothing else, or None."""
    for folder in (path / "val", path / "train", path):
        subdirs = [p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")] if folder.is_dir() else []
        if subdirs and all(WNID.fullmatch(p.name) for p in subdirs):
            return path
    return None


def read_imagenet(path: Path, split: str | None = None) -> EvalSet:
    """One split of an ImageNet-style folder (``val`` by default): every image under each WordNet-id
    folder, labelled with that id's index among the 1000; all 1000 classes are scored."""
    root = imagenet_root(path)
    if root is None:
        raise DataError(f"{printable(path)} is not an ImageNet folder (expected {IMAGENET_EXPECTS})")
    name = layout_split("imagenet", split, {"train": "train", "val": "val"}, "val")
    folder = root / name if (root / name).is_dir() else root
    if folder == root and ((root / "val").is_dir() or (root / "train").is_dir()):
        raise DataError(f"{printable(root)} has no {name}/ split")
    index = {wnid: k for k, wnid in enumerate(imagenet_wnids())}
    items = []
    for sub in _wnid_folders(folder):
        if sub.name not in index:
            raise DataError(f"{printable(sub)} is not one of the 1000 ImageNet-1k WordNet ids")
        items += [EvalItem(image=image, label=index[sub.name]) for image in image_files(sub)]
    if not items:
        raise DataError(f"no images under the WordNet-id folders of {printable(folder)}")
    return EvalSet(layout="imagenet", split=name, root=root, items=items, classes=imagenet_names(),
                   template_set="openai_imagenet")
