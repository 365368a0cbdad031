"""Our own layouts as evaluation sets: the demo, a folder (captions, class sub-folders,
``<image>.mask.png`` label maps) and a CSV/TSV table, read by :func:`~detailclip_cli.core.data.sources.read_samples`."""

from __future__ import annotations

from pathlib import Path

from detailclip_cli.core.data.benchmarks.evalset import EvalItem, EvalSet, MaskCoding
from detailclip_cli.core.data.demo import demo_templates, demo_version
from detailclip_cli.core.data.formats.table import TABLE_SUFFIXES
from detailclip_cli.core.data.samples import DataError
from detailclip_cli.core.data.sources import class_names, read_samples

FOLDER_EXPECTS = "images with same-named .txt captions, or class sub-folders (train/ and val/ optional)"
TABLE_EXPECTS = "a .csv / .tsv file with filepath and title columns"


def our_layout(spec: str | Path) -> str:
    """``demo``, ``table`` or ``folder``: which of ours ``spec`` is (a folder when unsure)."""
    if demo_version(spec) is not None:
        return "demo"
    return "table" if Path(spec).suffix.lower() in TABLE_SUFFIXES else "folder"


def read_ours(spec: str | Path, split: str | None = None) -> EvalSet:
    """The samples of ``spec``'s split (``val`` by default): one caption each, a class id when the
    data has classes, and its ``.mask.png`` (values are class ids, 0 = background, none ignored)."""
    layout, name = our_layout(spec), split or "val"
    samples = read_samples(spec, split=name)
    classes = class_names(spec, split=name) if layout == "demo" else sorted({s.label for s in samples if s.label})
    index = {c: k for k, c in enumerate(classes)}
    items = [EvalItem(image=s.image, label=index.get(s.label) if s.label is not None else None, mask=s.mask,
                      captions=(s.caption,) if s.caption else ()) for s in samples]
    if not items:
        raise DataError(f"no samples in {spec}")
    masks = any(s.mask is not None for s in samples)
    version = demo_version(spec)
    return EvalSet(layout=layout, split=name, root=Path(str(spec)), items=items, classes=classes or None,
                   templates=list(demo_templates(version)) if version else None,
                   mask_coding=MaskCoding(ignore_index=None) if masks else None)
