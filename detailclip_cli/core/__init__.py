"""The library: ``import detailclip_cli.core as dc``.

The names a notebook needs, each defined in the module where its concept lives; this file only
maps names to modules. They import lazily (PEP 562), so ``import detailclip_cli.core`` costs
no torch until a name is used::

    model = dc.load_model()                        # the shipped model, a run / model folder, open_clip:NAME
    images = dc.load_images(["photo.jpg"], model)  # (B, 3, S, S)
    probs = dc.zero_shot(model, images, ["a dog", "a cat"])  # (B, 2)
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# name -> (module, attribute in it)
_NAMES: dict[str, tuple[str, str]] = {
    "load_model": ("detailclip_cli.core.store.lookup", "resolve_model"),
    "load_images": ("detailclip_cli.core.use.batching", "load_images"),
    "encode_images": ("detailclip_cli.core.use.embed", "encode_images"),
    "encode_texts": ("detailclip_cli.core.use.embed", "encode_texts"),
    "zero_shot": ("detailclip_cli.core.use.zeroshot", "zero_shot"),
    "attention_maps": ("detailclip_cli.core.use.probes", "attention_maps"),
    "reconstruct": ("detailclip_cli.core.use.probes", "reconstruct"),
    "pretrain": ("detailclip_cli.core.training.pretrain", "train"),
    "distill": ("detailclip_cli.core.training.distill", "distill"),
    "evaluate": ("detailclip_cli.core.use.evaluate", "run_evaluation"),
    "load_preset": ("detailclip_cli.core.config", "load_preset"),
    "ModelConfig": ("detailclip_cli.core.config", "ModelConfig"),
    "TrainConfig": ("detailclip_cli.core.config", "TrainConfig"),
}

__all__ = [
    "load_model", "load_images", "encode_images", "encode_texts", "zero_shot", "attention_maps", "reconstruct",
    "pretrain", "distill", "evaluate", "load_preset", "ModelConfig", "TrainConfig",
]

if TYPE_CHECKING:  # what type checkers and IDEs see; at run time __getattr__ serves these
    from detailclip_cli.core.config import ModelConfig, TrainConfig, load_preset
    from detailclip_cli.core.store.lookup import resolve_model as load_model
    from detailclip_cli.core.training.distill import distill
    from detailclip_cli.core.training.pretrain import train as pretrain
    from detailclip_cli.core.use.batching import load_images
    from detailclip_cli.core.use.embed import encode_images, encode_texts
    from detailclip_cli.core.use.evaluate import run_evaluation as evaluate
    from detailclip_cli.core.use.probes import attention_maps, reconstruct
    from detailclip_cli.core.use.zeroshot import zero_shot


def __getattr__(name: str) -> Any:
    if name not in _NAMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module, attribute = _NAMES[name]
    value = getattr(importlib.import_module(module), attribute)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
