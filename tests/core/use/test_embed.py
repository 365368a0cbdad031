"""Image and text embeddings: unit vectors, the model's own towers, batching without effect."""

from __future__ import annotations

import torch

from detailclip_cli.core.use import embed


def test_image_embeddings_are_the_image_tower_normalised(model, images):
    emb = embed.encode_images(model, images)
    assert emb.shape == (3, model.cfg.embed_dim) and not emb.requires_grad
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(3))
    with torch.no_grad():
        raw = model.encode_image(images, normalize=False)
    torch.testing.assert_close(emb, raw / raw.norm(dim=-1, keepdim=True))


def test_text_embeddings_in_batches(model):
    texts = ["a photo of a cat", "a dog", "", "red"]
    emb = embed.encode_texts(model, texts)
    assert emb.shape == (4, model.cfg.embed_dim) and not emb.requires_grad
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(4))
    with torch.no_grad():
        raw = model.encode_text(model.tokenize(texts), normalize=False)
    torch.testing.assert_close(emb, raw / raw.norm(dim=-1, keepdim=True))
    torch.testing.assert_close(embed.encode_texts(model, texts, batch_size=3), emb, atol=1e-6, rtol=0)
