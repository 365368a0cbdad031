"""The built-in demo sets (``--data demo``, ``--data demo:v5``) as a data source: their ``train``
and ``val`` class folders with captions, read by the folder reader (the sets themselves are made
by :mod:`detailclip_cli.core.data.demo`)."""

from __future__ import annotations

from detailclip_cli.core.data.demo import LATEST_DEMO, demo_root
from detailclip_cli.core.data.formats.folder import read_folder
from detailclip_cli.core.data.samples import DataError, SampleList

DEMO_SPLITS = ("train", "val")


def read_demo(split: str, *, class_template: str, version: str = LATEST_DEMO) -> SampleList:
    """The samples of one split of a demo set (generated on first use).

    Demo v5's digits are chiral (a mirrored view would not show the digit its caption names), so
    its lists are marked ``chiral``; v6's patterns and captions survive a mirror.

    Raises:
        DataError: ``split`` is not one of :data:`DEMO_SPLITS`.
    """
    if split not in DEMO_SPLITS:
        raise DataError(f"the demo set has splits {', '.join(DEMO_SPLITS)}, not {split!r}")
    samples = read_folder(demo_root(version=version) / split, class_template=class_template)
    samples.chiral = version == "v5"
    return samples

