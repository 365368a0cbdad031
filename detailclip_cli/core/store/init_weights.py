"""Start pretraining from another model's CLIP weights (``pretrain --init``), optionally with the
text tower locked (LiT-style ``--lock-text``).

The init model (``open_clip:NAME`` with ``--pretrained``, a run folder or a saved model) fixes
the architecture of the image tower, text tower and embedding; the run's preset or config file
still gives the decoder, the distillation head (both start fresh) and the training settings.
The EMA teacher is copied from the student after the weights are in, so it starts equal to it.
"""

from __future__ import annotations

import dataclasses

from torch import nn

from detailclip_cli.core.config import ConfigError, ModelConfig
from detailclip_cli.core.store.lookup import resolve_model

# What an init model gives: both towers, the image projection and the logit scale.
CLIP_PARTS = ("visual.", "image_proj.", "text.", "logit_scale")


def init_model_config(model_cfg: ModelConfig, init_cfg: ModelConfig) -> ModelConfig:
    """``model_cfg`` (decoder, head) with the towers, embedding and logit scale of ``init_cfg``."""
    return dataclasses.replace(
        model_cfg, embed_dim=init_cfg.embed_dim, vision=dataclasses.replace(init_cfg.vision),
        text=dataclasses.replace(init_cfg.text), init_logit_scale=init_cfg.init_logit_scale,
        max_logit_scale=init_cfg.max_logit_scale,
    )


def copy_clip_weights_(model: nn.Module, source: nn.Module) -> None:
    """Copy ``source``'s towers, image projection and logit scale into ``model``, in place.

    Args:
        model: a :class:`DetailCLIP` built from :func:`init_model_config` of ``source.cfg``.
        source: a :class:`DetailCLIP`; its decoder and head (if any) are not copied.

    Raises:
        ConfigError: the two models' towers differ in shape.
    """
    state = {k: v for k, v in source.state_dict().items() if k.startswith(CLIP_PARTS)}
    try:
        missing, _ = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[-1].strip()
        raise ConfigError(f"the --init model does not fit the model being trained: {first}") from None
    not_copied = [k for k in missing if k.startswith(CLIP_PARTS)]
    if not_copied:
        raise ConfigError(f"the --init model lacks {len(not_copied)} tensors of the model being trained, "
                          f"e.g. {not_copied[0]}")


def lock_text_(model: nn.Module) -> None:
    """Freeze the text tower (its projection included): no gradient, so no optimiser update or
    weight decay ever touches it, and it stays bit-identical."""
    model.text.requires_grad_(False)


def load_init(spec: str, pretrained: str | None, model_cfg: ModelConfig, *, verify: bool = True):
    """Load the ``--init`` model and the run's model config with its towers.

    Args:
        spec: ``open_clip:NAME``, a run folder or a saved model folder.
        pretrained: with ``open_clip:NAME``, a pretrained tag or a local weights file.
        model_cfg: the preset's or config file's model config (decoder and head are kept).
        verify: check a model folder's weights against the SHA-256 its ``config.json`` records.

    Returns:
        (the model config to train, the loaded init model on the CPU).
    """
    init = resolve_model(spec, pretrained=pretrained, verify=verify)
    return init_model_config(model_cfg, init.cfg), init
