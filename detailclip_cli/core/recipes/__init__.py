"""Recipes: the method of a pretraining run, as data. Presets choose the size, recipes the method.

A recipe is a JSON file in this folder: a one-line ``summary``, the paper it follows
(``reference``), and two overlays, ``model`` and ``train``, laid over the preset's configs. In
``model``, a part set to ``null`` is switched off and ``{}`` is switched on (at the preset's
size); ``train`` sets :class:`~detailclip_cli.core.config.TrainConfig` fields: the removal
strategy, the loss weights (a weight of 0 leaves a term out of the total; it is still computed
and logged) and ``simclr_term`` (SLIP's extra loss, with its own projection MLP).

Precedence, lowest first: the preset, the recipe, the config file's own ``model`` / ``train``
values, the explicit command-line options. So a config file or an option can still change one
of a recipe's switches (``--recipe flip --keep-ratio 0.25``), and the recipe is recorded.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from detailclip_cli.core.config import ConfigError

# In the order ``--recipe list`` prints them; each is ``<name>.json`` here.
RECIPES = ("detailclip", "clip", "flip", "slip", "a-clip-like", "maskclip-like")
DEFAULT_RECIPE = "detailclip"
LIST = "list"  # ``--recipe list`` prints the recipes instead of training


@dataclass(frozen=True, kw_only=True)
class Recipe:
    """A named method: switches and extra losses laid over a preset's configs.

    Attributes:
        name: the recipe's name (its file name, without ``.json``).
        summary: one line for ``--recipe list``.
        reference: the paper the recipe follows.
        model: overlay on the model config (``{"decoder": None}`` switches the decoder off).
        train: overlay on the training config.
    """

    name: str
    summary: str
    reference: str
    model: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)

    def overlay(self) -> dict[str, Any]:
        """The ``{"model": ..., "train": ...}`` document that :func:`configs_from_dict` lays over a preset."""
        return {"model": self.model, "train": self.train}


def load_recipe(name: str) -> Recipe:
    """The recipe called ``name``.

    Raises:
        ConfigError: no such recipe (the message lists them).
    """
    if name not in RECIPES:
        raise ConfigError(f"unknown recipe {name!r} (choose from {', '.join(RECIPES)}, or {LIST} to describe them)")
    data = json.loads(resources.files(__name__).joinpath(f"{name}.json").read_text())
    return Recipe(name=name, **data)


def all_recipes() -> list[Recipe]:
    """Every recipe, in :data:`RECIPES` order."""
    return [load_recipe(name) for name in RECIPES]
