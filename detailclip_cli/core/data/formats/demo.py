"""The built-in demo set (``--data demo``) as a data source: its ``train`` and ``val`` class
folders with captions, read by the folder reader (the set itself is made by
:mod:`detailclip_cli.core.data.demo`)."""

from __future__ import annotations

import json

from detailclip_cli.core.data.demo import demo_root
from detailclip_cli.core.data.formats.folder import read_folder
from detailclip_cli.core.data.samples import DataError, SampleList

DEMO_SPLITS = ("train", "val")


def read_demo(split: str, *, class_template: str) -> SampleList:
    """The samples of one split of the demo set (generated on first use).

    Its digits are chiral: a mirrored view would not show the digit its caption names, so the
    list is marked ``chiral``.

    Raises:
        DataError: ``split`` is not one of :data:`DEMO_SPLITS`.
    """
    if split not in DEMO_SPLITS:
        raise DataError(f"the demo set has splits {', '.join(DEMO_SPLITS)}, not {split!r}")
    samples = read_folder(demo_root() / split, class_template=class_template)
    samples.chiral = True
    return samples


def demo_classes() -> list[str]:
    """The demo set's class names in label order (its ``classes.json``)."""
    return list(json.loads((demo_root() / "classes.json").read_text()))
