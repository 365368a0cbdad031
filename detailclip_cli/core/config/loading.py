"""Configs from JSON documents: the shipped presets (JSON files in ``core/presets``), config
files, and a recipe's overlay laid between a document's preset and its own values."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

from detailclip_cli.core.config.model import ModelConfig
from detailclip_cli.core.config.schema import ConfigError
from detailclip_cli.core.config.train import TrainConfig

PRESETS = ("tiny", "small", "base", "paper")


def load_preset(name: str) -> tuple[ModelConfig, TrainConfig]:
    """Return the model and training configs of a named preset (``tiny``, ``small``, ``base``, ``paper``)."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r} (choose from {', '.join(PRESETS)})")
    text = resources.files("detailclip_cli.core.presets").joinpath(f"{name}.json").read_text()
    return configs_from_dict(json.loads(text))


def configs_from_dict(data: dict[str, Any], *,
                      recipe: dict[str, Any] | None = None) -> tuple[ModelConfig, TrainConfig]:
    """Split a ``{"model": ..., "train": ...}`` document into validated configs.

    Lowest first: the document's preset, the ``recipe`` overlay (a ``{"model": ..., "train": ...}``
    document, :meth:`Recipe.overlay <detailclip_cli.core.recipes.Recipe.overlay>`), the
    document's own values.
    """
    # "about" is a line for people (what a preset is); it sets nothing.
    unknown = sorted(set(data) - {"model", "train", "preset", "about"})
    if unknown:
        raise ConfigError(f"unknown top-level key(s): {', '.join(unknown)} (allowed: preset, model, train, about)")
    model, train = ModelConfig(), TrainConfig()
    if "preset" in data:
        model, train = load_preset(data["preset"])
    for layer in (recipe or {}, data):
        if "model" in layer:
            model = ModelConfig.from_dict(_merge(model.to_dict(), layer["model"]))
        if "train" in layer:
            train = TrainConfig.from_dict(_merge(train.to_dict(), layer["train"]))
    return model, train


def load_config_file(path: str | Path, *,
                     recipe: dict[str, Any] | None = None) -> tuple[ModelConfig, TrainConfig]:
    """Read a JSON config file (``{"preset": "tiny", "model": {...}, "train": {...}}``); ``recipe``
    as :func:`configs_from_dict` takes it."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a JSON object")
    return configs_from_dict(data, recipe=recipe)


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Recursively overlay ``override`` on ``base`` (a None sub-config switches a part off)."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out
