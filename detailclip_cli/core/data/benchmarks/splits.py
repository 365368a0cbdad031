"""Split names: each layout names its splits its own way (``validation``, ``val2017``, ``test``);
people say ``train`` / ``val`` / ``test``, or the layout's own name."""

from __future__ import annotations

from collections.abc import Mapping

from detailclip_cli.core.data.samples import DataError


def layout_split(layout: str, split: str | None, names: Mapping[str, str], default: str) -> str:
    """The layout's name for ``split`` (``None``: ``default``, the split its results are published on).

    Args:
        layout: the layout, for the message.
        split: ``train`` / ``val`` / ``test`` or a name of the layout's own, or None.
        names: our name -> the layout's name (e.g. ``{"val": "validation"}``).
        default: the layout's evaluation split, in its own naming.

    Raises:
        DataError: a split the layout does not have.
    """
    if split is None:
        return default
    if split in names:
        return names[split]
    if split in names.values():
        return split
    known = sorted(set(names) | set(names.values()))
    raise DataError(f"the {layout} layout has no split {split!r} (choose from {', '.join(known)})")
