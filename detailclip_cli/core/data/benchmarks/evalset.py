"""What every evaluation layout gives: an :class:`EvalSet` of :class:`EvalItem` records, and the
torch ``Dataset`` that reads them (:class:`EvalSetDataset`).

An item names where its image lies (a file, or a member of a tar shard), and what the layout
says about it: a class id, a label map (a per-pixel class file and the :class:`MaskCoding` that
turns its values into class ids), captions. The reading itself (decoding, then the transform the
protocol asks for) happens in ``DataLoader`` workers, one item at a time, so memory is bounded
by the batch, never by the data set.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from torch.utils.data import Dataset

from detailclip_cli.core.data.decode import decode_image, load_image, load_mask
from detailclip_cli.core.data.samples import DataError, printable

IGNORE_INDEX = 255  # the label value every layout's "not counted" pixels end up as


@dataclass(frozen=True)
class TarImage:
    """An image stored as a member of an uncompressed tar shard (read by offset, no scan).

    Attributes:
        shard: the ``.tar`` file.
        offset: byte offset of the member's data.
        size: its size in bytes.
        name: ``shard.tar:key.ext``, for messages.
    """

    shard: Path
    offset: int
    size: int
    name: str

    def read(self) -> bytes:
        with open(self.shard, "rb") as f:
            f.seek(self.offset)
            data = f.read(self.size)
        if len(data) != self.size:
            raise DataError(f"cannot read image {printable(self.name)}: the shard is truncated")
        return data


@dataclass(frozen=True)
class MaskCoding:
    """How a layout's label files map to class ids.

    Attributes:
        ignore_index: the raw value of pixels no metric counts (VOC's boundaries, Cityscapes'
            unlabelled), or None when every value is a class.
        reduce_zero_label: raw 0 is "other" (ignored) and raw k is class k - 1 (ADE20K).
    """

    ignore_index: int | None = IGNORE_INDEX
    reduce_zero_label: bool = False

    def decode(self, raw: np.ndarray) -> np.ndarray:
        """(H, W) raw label values -> (H, W) int64 class ids, :data:`IGNORE_INDEX` where not counted."""
        ids = raw.astype(np.int64)
        ignored = np.zeros(ids.shape, dtype=bool) if self.ignore_index is None else ids == self.ignore_index
        if self.reduce_zero_label:
            ignored |= ids == 0
            ids = ids - 1
        return np.where(ignored, IGNORE_INDEX, ids)


@dataclass(frozen=True)
class EvalItem:
    """One evaluation example.

    Attributes:
        image: the image file, or a :class:`TarImage`.
        label: its class id, when the layout has classes per image.
        mask: its label map, when the layout has one (decoded with the set's :class:`MaskCoding`).
        captions: its captions (several per image in COCO and Flickr30k).
    """

    image: Path | TarImage
    label: int | None = None
    mask: Path | None = None
    captions: tuple[str, ...] = ()


@dataclass
class EvalSet:
    """One split of an evaluation data set, as its layout describes it.

    Attributes:
        layout: the layout's name (``ade20k``, ``voc``, ..., or ours: ``demo``, ``folder``, ``table``).
        split: the split's name in the layout (``validation``, ``val2017``, ``test``, ...).
        root: the folder (or file) it was read from.
        items: the examples, in a fixed order.
        classes: the class names of the per-image labels, in id order, or None.
        mask_classes: the class names of the label maps, in id order; None when unknown (our
            folders: :meth:`num_mask_classes` finds the count in the label maps).
        templates: the set's own zero-shot templates (``{}`` where the class name goes), or None.
        template_set: the name of the template set the layout is scored with when it ships none
            (``openai_imagenet`` for ImageNet, ``demo`` for the demo), or None.
        mask_coding: how label maps decode; None when the set has none.
        notes: what reading skipped on the way (e.g. ``{"images_without_label_map": 2}``).
    """

    layout: str
    split: str
    root: Path
    items: list[EvalItem]
    classes: list[str] | None = None
    mask_classes: list[str] | None = None
    templates: list[str] | None = None
    template_set: str | None = None
    mask_coding: MaskCoding | None = None
    notes: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.items)

    @property
    def has_labels(self) -> bool:
        return bool(self.classes) and bool(self.items) and all(i.label is not None for i in self.items)

    @property
    def has_masks(self) -> bool:
        return self.mask_coding is not None and bool(self.items) and all(i.mask is not None for i in self.items)

    @property
    def has_captions(self) -> bool:
        return bool(self.items) and all(i.captions for i in self.items)

    @property
    def num_captions(self) -> int:
        return sum(len(i.captions) for i in self.items)

    def limited(self, limit: int | None) -> EvalSet:
        """``limit`` items spread evenly over the set (all when None): a quick try on a subset.

        Every k-th item rather than the first ``limit``, so a split sorted by class (ImageNet's
        folders, the demo) keeps its classes.
        """
        if limit is None or limit >= len(self.items):
            return self
        n = len(self.items)
        return dataclasses.replace(self, items=[self.items[(i * n) // limit] for i in range(limit)])

    def num_mask_classes(self) -> int:
        """Classes of the label maps: the layout's list, or (our folders) 1 + the largest id found."""
        if self.mask_classes:
            return len(self.mask_classes)
        top = 0
        for item in self.items:
            ids = self.mask_coding.decode(load_mask(item.mask))
            counted = ids[ids != IGNORE_INDEX]
            if counted.size:
                top = max(top, int(counted.max()))
        return top + 1

    def describe(self) -> dict:
        """What the JSON result says about the data: layout, split, counts."""
        return {"layout": self.layout, "split": self.split, "root": str(self.root), "images": len(self.items),
                "captions": self.num_captions, "classes": len(self.classes or self.mask_classes or []) or None, **self.notes}


def read_image(image: Path | TarImage):
    """An item's image as an RGB PIL image (:func:`load_image` / :func:`decode_image`)."""
    if isinstance(image, TarImage):
        return decode_image(image.read(), image.name)
    return load_image(image)


class EvalSetDataset(Dataset):
    """The items of an :class:`EvalSet`, each read and passed through a protocol's transform.

    Args:
        eval_set: the set.
        transform: ``(image, mask, index) -> dict`` of tensors: the RGB PIL image, the decoded
            ``(H, W)`` int64 class ids (None when the item has no label map) and the item's index.
        indices: which items, in this order (all by default); a probe's training draws repeat.

    Each item is that dict plus ``index`` and, when the item has one, ``label``; an item whose
    image or label map cannot be read is ``{"bad": message}``, so a caller can skip and count it
    (``collate_skipping_bad``).
    """

    def __init__(self, eval_set: EvalSet, transform: Callable[..., dict],
                 indices: Sequence[int] | None = None) -> None:
        self.items = eval_set.items
        self.coding = eval_set.mask_coding
        self.transform = transform
        self.indices = list(range(len(self.items))) if indices is None else list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict:
        index = self.indices[i]
        item = self.items[index]
        try:
            image = read_image(item.image)
            mask = None
            if item.mask is not None and self.coding is not None:
                mask = self.coding.decode(load_mask(item.mask))
                if mask.shape != (image.height, image.width):
                    raise DataError(f"label map {printable(item.mask)} is {mask.shape[1]}x{mask.shape[0]} "
                                    f"but its image is {image.width}x{image.height}")
        except DataError as exc:
            return {"bad": str(exc)}
        out = self.transform(image, mask, i)
        out["index"] = index
        if item.label is not None:
            out["label"] = item.label
        return out
