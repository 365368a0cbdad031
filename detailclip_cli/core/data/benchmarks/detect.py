"""The one place that decides which layout a ``--data`` path is in, and opens it.

Each layout is recognised by its own files, in the order of :data:`LAYOUTS` (the distributed
benchmark layouts first, ours last, since a folder of images is also a valid "folder"):
``--layout NAME`` skips the detection. A path that matches no layout is one :class:`DataError`
line saying what each layout expects.
"""

from __future__ import annotations

from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import NamedTuple

from detailclip_cli.core.data.benchmarks import classification, retrieval, segmentation
from detailclip_cli.core.data.benchmarks.evalset import EvalSet
from detailclip_cli.core.data.benchmarks.ours import (
    FOLDER_EXPECTS,
    TABLE_EXPECTS,
    read_ours,
)
from detailclip_cli.core.data.demo import demo_version
from detailclip_cli.core.data.formats.table import TABLE_SUFFIXES
from detailclip_cli.core.data.samples import DataError, printable
from detailclip_cli.core.data.walk import is_image_file


class Layout(StrEnum):
    """The evaluation layouts ``--layout`` names (``auto``: found from the files)."""

    auto = "auto"
    ade20k = "ade20k"
    voc = "voc"
    cityscapes = "cityscapes"
    coco = "coco"
    karpathy = "karpathy"
    clip_benchmark = "clip_benchmark"
    imagenet = "imagenet"
    demo = "demo"
    folder = "folder"
    table = "table"


class LayoutReader(NamedTuple):
    """How one layout is recognised and read."""

    matches: Callable[[Path], object]  # truthy when the path is in this layout
    read: Callable[[Path, str | None], EvalSet]
    expects: str  # what the layout's files are, for the message when nothing matches


def _read_our(path: Path, split: str | None) -> EvalSet:
    return read_ours(path, split)


LAYOUTS: dict[Layout, LayoutReader] = {
    Layout.ade20k: LayoutReader(segmentation.ade20k_root, segmentation.read_ade20k, segmentation.ADE20K_EXPECTS),
    Layout.voc: LayoutReader(segmentation.voc_root, segmentation.read_voc, segmentation.VOC_EXPECTS),
    Layout.cityscapes: LayoutReader(segmentation.cityscapes_root, segmentation.read_cityscapes,
                                    segmentation.CITYSCAPES_EXPECTS),
    Layout.coco: LayoutReader(retrieval.coco_root, retrieval.read_coco, retrieval.COCO_EXPECTS),
    Layout.karpathy: LayoutReader(retrieval.karpathy_file, retrieval.read_karpathy, retrieval.KARPATHY_EXPECTS),
    Layout.clip_benchmark: LayoutReader(classification.clip_benchmark_root, classification.read_clip_benchmark,
                                        classification.CLIP_BENCHMARK_EXPECTS),
    Layout.imagenet: LayoutReader(classification.imagenet_root, classification.read_imagenet,
                                  classification.IMAGENET_EXPECTS),
    Layout.folder: LayoutReader(lambda p: p.is_dir(), _read_our, FOLDER_EXPECTS),
    Layout.table: LayoutReader(lambda p: p.is_file() and p.suffix.lower() in TABLE_SUFFIXES, _read_our, TABLE_EXPECTS),
}


def detect_layout(spec: str | Path) -> Layout:
    """The layout of ``spec``: ``demo``, or the first of :data:`LAYOUTS` whose files are there.

    Raises:
        DataError: the path does not exist, or matches no layout (the message lists each one's files).
    """
    if demo_version(spec) is not None:
        return Layout.demo
    path = Path(spec).expanduser()
    if not path.exists():
        raise DataError(f"data path does not exist: {printable(path)}")
    for layout, reader in LAYOUTS.items():
        if layout is not Layout.folder and reader.matches(path):
            return layout
    if path.is_dir() and _holds_images(path):
        return Layout.folder
    expects = "; ".join(f"{layout}: {reader.expects}" for layout, reader in LAYOUTS.items())
    raise DataError(f"{printable(path)} matches no evaluation layout ({expects})")


def _holds_images(path: Path) -> bool:
    return any(is_image_file(p) for p in path.rglob("*") if p.is_file())


def open_eval_set(spec: str | Path, *, layout: str = Layout.auto, split: str | None = None,
                  limit: int | None = None) -> EvalSet:
    """One split of an evaluation data set.

    Args:
        spec: ``demo`` (or ``demo:VERSION``), a folder or a file (a Karpathy JSON, a CSV/TSV table).
        layout: a :class:`Layout` name, ``auto`` to detect it.
        split: ``train`` / ``val`` / ``test`` or the layout's own name; None for the split the
            layout's results are published on (``validation`` for ADE20K, ``test`` for Karpathy
            and clip_benchmark, ``val`` otherwise).
        limit: keep only the first ``limit`` items.

    Raises:
        DataError: an unknown layout, a path not in that layout, a missing split, unusable files.
    """
    try:
        chosen = Layout(layout)
    except ValueError:
        raise DataError(f"unknown layout {layout!r} (choose from {', '.join(Layout)})") from None
    if chosen is Layout.auto:
        chosen = detect_layout(spec)
    if chosen is Layout.demo:
        if demo_version(spec) is None:
            raise DataError("--layout demo reads only --data demo (or demo:VERSION)")
        return read_ours(spec, split).limited(limit)
    path = Path(spec).expanduser()
    if not path.exists():
        raise DataError(f"data path does not exist: {printable(path)}")
    reader = LAYOUTS[chosen]
    if not reader.matches(path):
        raise DataError(f"{printable(path)} is not in the {chosen} layout (expected {reader.expects})")
    return reader.read(path, split).limited(limit)
