"""Embeddings: images and texts to unit vectors through a model's two towers."""

from __future__ import annotations

from collections.abc import Sequence

import torch


@torch.no_grad()
def encode_images(model, images: torch.Tensor) -> torch.Tensor:
    """Image embeddings.

    Args:
        model: a :class:`DetailCLIP`.
        images: (B, 3, S, S) normalised images on the model's device (:func:`load_images`).

    Returns:
        (B, E) L2-normalised embeddings.
    """
    return model.encode_image(images)


@torch.no_grad()
def encode_texts(model, texts: Sequence[str], *, batch_size: int = 256) -> torch.Tensor:
    """Text embeddings, ``batch_size`` texts per text-tower call.

    Args:
        model: a :class:`DetailCLIP`.
        texts: N strings (tokenized with the model's tokenizer, truncated to its context).

    Returns:
        (N, E) L2-normalised embeddings on the model's device.
    """
    device = model.logit_scale.device
    texts = list(texts)
    out = [model.encode_text(model.tokenize(texts[i:i + batch_size]).to(device))  # (b, E)
           for i in range(0, len(texts), batch_size)]
    return torch.cat(out)
