"""Evaluation data sets in the layouts they are distributed in, and ours.

- :mod:`.detect`: :class:`Layout`, :func:`detect_layout` and :func:`open_eval_set` (the one place
  that decides what an evaluation ``--data`` path is).
- :mod:`.evalset`: :class:`EvalSet` / :class:`EvalItem` (what every layout gives) and
  :class:`EvalSetDataset` (the items read in ``DataLoader`` workers).
- One module per family: :mod:`.segmentation` (ADE20K, Pascal VOC, Cityscapes),
  :mod:`.retrieval` (COCO captions, Karpathy splits), :mod:`.classification` (clip_benchmark
  webdatasets, ImageNet folders), :mod:`.ours` (the demo, our folders and tables).
"""

from detailclip_cli.core.data.benchmarks.detect import (
    LAYOUTS,
    Layout,
    detect_layout,
    open_eval_set,
)
from detailclip_cli.core.data.benchmarks.evalset import (
    IGNORE_INDEX,
    EvalItem,
    EvalSet,
    EvalSetDataset,
    MaskCoding,
    TarImage,
    read_image,
)

__all__ = ["IGNORE_INDEX", "LAYOUTS", "EvalItem", "EvalSet", "EvalSetDataset", "Layout", "MaskCoding", "TarImage",
           "detect_layout", "open_eval_set", "read_image"]
