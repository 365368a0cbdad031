"""The one place that decides what a data spec (``--data``) names, and opens it.

=========================================================  ==========  ===============================
spec                                                       source      module
=========================================================  ==========  ===============================
``"demo"`` / ``"demo:v5"``: a built-in demo set           map-style   :mod:`.formats.demo`
a brace pattern or a file ending in ``.tar``, or a folder  streaming   :mod:`.shards`
of ``.tar`` shards (``detailclip shard``'s, img2dataset's)
a ``.csv`` / ``.tsv`` file                                 map-style   :mod:`.formats.table`
a folder of images with ``.txt`` captions, or of class     map-style   :mod:`.formats.folder`
sub-folders (``images_only``: any images, no captions)
=========================================================  ==========  ===============================

If a folder holds a sub-folder named after the requested split (``train/``, ``val/``), that
sub-folder is read instead, so one spec serves both splits.

A **map-style source** (:class:`MapSource`) is read whole when opened: its samples in a
deterministic order (sorted by path for folders, file order for tables), with the
:class:`ReadReport` of what was skipped or repaired. A **streaming source**
(:class:`StreamSource`) is only found and counted when opened; :meth:`StreamSource.stream`
gives the :class:`StreamingDataset` that the training loop takes in place of a map-style
``Dataset``, which makes its own batches.

Adding a format: a module under ``formats/`` (or a package like ``shards/``) that returns one
of the two, and one branch in :func:`open_source` (and in :func:`read_samples` if it is read
whole).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from detailclip_cli.core.data.dataset import TwoViewDataset
from detailclip_cli.core.data.demo import demo_classes, demo_version
from detailclip_cli.core.data.formats.demo import read_demo
from detailclip_cli.core.data.formats.folder import read_folder, read_image_folder
from detailclip_cli.core.data.formats.table import TABLE_SUFFIXES, read_table
from detailclip_cli.core.data.samples import (
    DataError,
    ReadReport,
    Sample,
    SampleList,
    printable,
)
from detailclip_cli.core.data.shards.spec import streams_shards
from detailclip_cli.core.data.shards.stream import ShardSource
from detailclip_cli.core.data.walk import split_folder


@runtime_checkable
class MapSource(Protocol):
    """Samples read whole, in a fixed order (:class:`SampleList` is one).

    Attributes:
        report: what reading skipped or repaired (``report.samples`` of them were kept).
        chiral: whether a mirrored image would contradict its caption (the demo set's
            digits), so training views must not be flipped.
    """

    report: ReadReport
    chiral: bool

    def __len__(self) -> int:
        """The number of samples."""
        ...

    def __getitem__(self, index: int) -> Sample:
        """Sample ``index``."""
        ...

    def __iter__(self) -> Iterator[Sample]:
        """The samples, in order."""
        ...


@runtime_checkable
class StreamSource(Protocol):
    """Samples streamed from storage, never held whole (:class:`ShardSource` is one).

    Opening one finds and counts its data; its items are made only when streamed, by the
    views given to :meth:`stream` (they need the model's tokenizer, built after the data is
    checked).

    Attributes:
        spec: the spec it was opened from.
        chiral: as for :class:`MapSource`.
    """

    spec: str
    chiral: bool

    def __len__(self) -> int:
        """Samples in one epoch."""
        ...

    def stream(self, views: TwoViewDataset, *, seed: int) -> StreamingDataset:
        """The training stream whose items ``views.make_item`` makes, its order seeded by ``seed``."""
        ...


@runtime_checkable
class ReportingDataset(Protocol):
    """A training dataset that says what reading its data skipped or repaired."""

    def data_report(self) -> ReadReport:
        """The counts for ``run.json`` and the run's data line (see :class:`ReadReport`)."""
        ...


@runtime_checkable
class StreamingDataset(ReportingDataset, Protocol):
    """What the training loop takes in place of a map-style ``Dataset``: it makes its own batches
    (:class:`~detailclip_cli.core.data.shards.stream.ShardDataset` is one)."""

    def __len__(self) -> int:
        """Samples in one epoch."""
        ...

    def batches(self, cfg: Any, start_step: int, *, rank: int = 0, world_size: int = 1,
                pin_memory: bool = False) -> Iterator[dict]:
        """Endless batches of process ``rank`` of ``world_size`` from step ``start_step`` on.

        Each batch holds this process's ``cfg.batch_size / world_size`` samples (those that
        cannot be read left out): ``view1``, ``view2`` ``(B, 3, H, W)``, ``index`` ``(B,)``,
        ``text`` ``(B, context)`` when captions are used, ``local_views`` ``(B, N, 3, h, h)``
        for multi-crop, and ``bad``, the messages of the samples left out. The batches of a
        step depend only on the seed, the data, the step and ``cfg`` (``batch_size``,
        ``workers``), so a resumed run continues exactly.
        """
        ...


DataSource = MapSource | StreamSource


def open_source(
    spec: str | Path,
    *,
    split: str = "train",
    images_only: bool = False,
    samples_per_epoch: int = 0,
    streaming: bool = True,
) -> DataSource:
    """Open the data a spec names (see the module docstring for what each spec names).

    Args:
        spec: ``"demo"``, a folder, a ``.csv`` / ``.tsv`` file, or a shard spec.
        split: which split of the demo set, or of a folder with split sub-folders.
        images_only: read the images of a folder or a table with or without captions, each with
            an empty caption (distillation never reads them); the demo set is read as it is.
        samples_per_epoch: the length of an epoch of streamed data in samples (0: one pass).
        streaming: whether the caller can take a :class:`StreamSource`; without it (evaluation,
            which needs the samples whole) shard specs are read as the other formats, and fail
            as they do.

    Returns:
        A :class:`MapSource` (a :class:`SampleList`) or, for tar shards, a :class:`StreamSource`.

    Raises:
        DataError: the spec is missing, empty, malformed or holds no usable sample, or
            ``samples_per_epoch`` was given for data that is not streamed.
    """
    if streaming and streams_shards(spec, samples_per_epoch=samples_per_epoch, split=split):
        return ShardSource(spec, split=split, samples_per_epoch=samples_per_epoch)
    return read_samples(spec, split=split, images_only=images_only)


def read_samples(
    spec: str | Path,
    *,
    split: str = "train",
    image_column: str = "filepath",
    caption_column: str = "title",
    label_column: str | None = None,
    class_template: str = "a photo of a {}.",
    images_only: bool = False,
) -> SampleList:
    """Read the samples of a data set read whole (the map-style formats of :func:`open_source`).

    Args:
        spec: ``"demo"`` (or ``"demo:v5"``), a folder, or a ``.csv`` / ``.tsv`` file (see the
            module docstring).
        split: which split of the demo set, or of a folder with split sub-folders.
        image_column: CSV/TSV column holding image paths.
        caption_column: CSV/TSV column holding captions.
        label_column: optional CSV/TSV column holding class names.
        class_template: caption for class-folder images; ``{}`` becomes the class name
            (underscores read as spaces).
        images_only: a folder's or table's images alone, each once, with empty captions (a
            folder: every image, with or without a caption; a table: its caption and label
            columns not read, so no row is dropped for its caption); the demo set as it is.

    Returns:
        A :class:`SampleList` in a deterministic order (sorted by path for folders, file order
        for tables); its ``report`` counts the samples skipped or repaired on the way.

    Raises:
        DataError: the spec is missing, empty or malformed, or no usable sample is left.
    """
    version = demo_version(spec)
    if version is not None:
        return read_demo(split, class_template=class_template, version=version)
    path = Path(spec).expanduser()
    if not path.exists():
        raise DataError(f"data path does not exist: {printable(path)}")
    if path.is_file():
        if path.suffix.lower() in TABLE_SUFFIXES:
            return read_table(
                path, image_column=image_column, caption_column=caption_column, label_column=label_column,
                images_only=images_only,
            )
        raise DataError(f"unsupported data file {printable(path)} (expected a folder, a .csv or a .tsv)")
    folder = split_folder(path, split)
    return read_image_folder(folder) if images_only else read_folder(folder, class_template=class_template)


def class_names(
    spec: str | Path,
    *,
    split: str = "train",
    image_column: str = "filepath",
    caption_column: str = "title",
    label_column: str | None = None,
) -> list[str]:
    """The class names of a data spec, in label order.

    Args:
        spec: as for :func:`read_samples`.
        split: as for :func:`read_samples`.
        image_column: as for :func:`read_samples`.
        caption_column: as for :func:`read_samples`.
        label_column: as for :func:`read_samples`.

    Returns:
        The demo set's ``classes.json`` order; the sorted sub-folder names of a class-folder
        tree; otherwise the sorted distinct labels (empty when there are none).
    """
    version = demo_version(spec)
    if version is not None:
        return demo_classes(version)
    samples = read_samples(
        spec, split=split, image_column=image_column, caption_column=caption_column, label_column=label_column
    )
    return sorted({s.label for s in samples if s.label is not None})
