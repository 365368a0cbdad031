"""The shipped model: a tiny trained DetailCLIP inside the package (package data), so an installed
wheel has a default model. Nothing here imports torch: the CLI names the model before loading it."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

SHIPPED_MODEL = "detailclip-tiny"


def shipped_model_dir() -> Path:
    """The model used when no ``--model`` is given: package data, ``shipped/detailclip-tiny``.

    Found through :mod:`importlib.resources`, so it is the installed package's copy wherever
    the package lives (an editable checkout or a wheel in site-packages).
    """
    folder = resources.files(__package__) / SHIPPED_MODEL
    # A wheel installs as plain files, so the traversable is a real folder; str() keeps the
    # Path type for callers that list or copy it.
    return Path(str(folder))


def model_name(spec: str | None) -> str:
    """How results name the model ``spec`` gives: the spec itself, or the shipped model's name."""
    return spec or SHIPPED_MODEL
