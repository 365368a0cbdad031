"""What every config shares: its error, its JSON document's version, and the checks on its values.

A config is read from JSON a person wrote, so each check here ends, when the value cannot be
used, in a one-line :class:`ConfigError` naming the value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable
from typing import Any

from detailclip_cli.core.choices import one_of
from detailclip_cli.errors import UsageError

# Version 2 (detailclip 0.2) added the authors' recipe settings; see each config module's
# _V1_DEFAULTS for what a version 1 document meant by a key it lacks.
CONFIG_VERSION = 2

# Seeds seed Python, NumPy and torch alike; NumPy takes [0, 2**32).
SEED_LIMIT = 2**32


class ConfigError(UsageError, ValueError):
    """A configuration value or file that cannot be used; the message is one line for people."""


# -- the JSON document ------------------------------------------------------------------------


def to_document(config: Any) -> dict[str, Any]:
    """A config dataclass as its JSON document: ``{"version": CONFIG_VERSION, <fields>}``."""
    return {"version": CONFIG_VERSION, **dataclasses.asdict(config)}


def split_version(data: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """A document's version (this one's when it names none) and a copy of its other keys.

    Raises:
        ConfigError: a document written by a newer detailclip (its ``version`` above
            :data:`CONFIG_VERSION`), or a version that is not an integer.
    """
    data = dict(data)
    version = data.pop("version", CONFIG_VERSION)
    if not isinstance(version, int) or version > CONFIG_VERSION:
        raise ConfigError(
            f"config version {version!r} is newer than this detailclip understands ({CONFIG_VERSION}); upgrade detailclip"
        )
    return version, data


def build(cls, data: dict[str, Any], where: str):
    """Build a dataclass from a dict, rejecting unknown keys with a message naming them."""
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise ConfigError(f"unknown key(s) in {where}: {', '.join(unknown)} (allowed: {', '.join(names)})")
    kwargs = {}
    for key, value in data.items():
        # JSON has no tuples; restore them where the dataclass default is a tuple.
        default = names[key].default
        if isinstance(value, list) and isinstance(default, tuple):
            value = tuple(value)
        kwargs[key] = value
    return cls(**kwargs)


# -- the values ---------------------------------------------------------------------------------


def check_types(obj: Any, where: str) -> None:
    """Refuse a dataclass value of the wrong JSON type (a config file may hold anything), and a
    float that is not finite (NaN or Inf), naming the field.

    The field's annotation decides: ``int`` wants an integer (not a boolean), ``float`` any
    finite number, ``bool`` a boolean, ``str`` a string, ``tuple[...]`` finite numbers,
    ``X | None`` also None. Sub-configs (other dataclasses) are checked by their own call.
    """
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        kind = f.type.replace(" | None", "")
        if value is None and f.type.endswith("| None"):
            continue
        if kind in ("int", "float", "bool", "str") or kind.startswith("tuple["):
            if not _fits(value, kind):
                raise ConfigError(f"{where} {f.name} must be {_KIND_NAMES.get(kind, 'a list of finite numbers')}, "
                                  f"got {value!r}")


_KIND_NAMES = {"int": "an integer", "float": "a finite number", "bool": "true or false", "str": "a string"}


def _fits(value: Any, kind: str) -> bool:
    def number(x: Any) -> bool:
        return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)

    if kind == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "float":
        return number(value)
    if kind == "bool":
        return isinstance(value, bool)
    if kind == "str":
        return isinstance(value, str)
    return isinstance(value, (tuple, list)) and all(number(x) for x in value)


def check_seed(seed: Any, name: str = "seed") -> int:
    """``seed`` if it is an integer in ``[0, 2**32)``; a :class:`ConfigError` naming ``name`` otherwise."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < SEED_LIMIT:
        raise ConfigError(f"{name} must be an integer in [0, 2**32), got {seed!r}")
    return seed


# The range checks below take the values to check as (name in the message, value) pairs and
# refuse the first one out of range, so a validate method reads as a list of its rules.


def at_least(low: int, values: Iterable[tuple[str, Any]]) -> None:
    """Refuse the first value below ``low``: ``<name> must be at least <low>, got <value>``."""
    for name, value in values:
        if value < low:
            raise ConfigError(f"{name} must be at least {low}, got {value}")


def positive(values: Iterable[tuple[str, Any]]) -> None:
    """Refuse the first value that is not above 0: ``<name> must be positive, got <value>``."""
    for name, value in values:
        if value <= 0:
            raise ConfigError(f"{name} must be positive, got {value}")


def fraction(values: Iterable[tuple[str, Any]]) -> None:
    """Refuse the first value outside ``[0, 1]``: ``<name> must be in [0, 1], got <value>``."""
    for name, value in values:
        if not 0.0 <= value <= 1.0:
            raise ConfigError(f"{name} must be in [0, 1], got {value}")


def check_choice(name: str, value: Any, choices: Iterable[str]) -> None:
    """Refuse a value that is none of ``choices`` (an enum): ``<name> must be a, b or c, not 'x'``."""
    if value not in tuple(choices):
        raise ConfigError(f"{name} must be {one_of(choices)}, not {value!r}")
