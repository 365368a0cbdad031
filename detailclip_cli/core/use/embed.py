"""Embeddings: images and texts to unit vectors through a model's two towers, at any resolution,
and the patch tokens of the image tower's last blocks."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from detailclip_cli.core.device import autocast_dtype
from detailclip_cli.core.use.batching import SkipLog, eval_batches
from detailclip_cli.errors import UsageError
from detailclip_cli.core.data import make_eval_transform


def check_resolution(model, size: int) -> int:
    """``size`` when the image tower can read ``size`` x ``size`` images (a multiple of its patch size).

    Raises:
        UsageError: it is not.
    """
    p = model.visual.patch_size
    if size < p or size % p:
        raise UsageError(f"the resolution must be a multiple of the model's patch size {p}, not {size}")
    return size


@torch.no_grad()
def image_tokens(model, images: torch.Tensor, *, last_k: int = 1) -> list[torch.Tensor]:
    """The normalised tokens of the image tower's last ``last_k`` blocks, at any resolution.

    Images of another size than the model's are read on a bigger or smaller patch grid with the
    position embedding resampled to it (:meth:`VisionTransformer.patch_pos_embed`); at the
    model's own size nothing is resampled, so the tokens are exactly :meth:`visual.forward`'s.

    Args:
        model: a :class:`DetailCLIP`.
        images: (B, 3, H, W), H and W multiples of the patch size.
        last_k: how many of the last blocks; each block's output gets the final norm, as DINOv2's
            ``get_intermediate_layers`` does, so the last one equals the tower's output.

    Returns:
        ``last_k`` tensors (B, 1 + L, D), the last block last; L = (H / P) * (W / P).
    """
    visual = model.visual
    patches = visual.embed_patches(images, interpolate_pos=True)  # (B, L, D)
    if last_k == 1:
        tokens, _ = visual.forward_tokens(patches)
        return [tokens]
    if not 1 <= last_k <= visual.depth:
        raise ValueError(f"last_k must be in [1, {visual.depth}], got {last_k}")
    taken: list[torch.Tensor] = []
    # A block returns (tokens, attention); hooks read its tokens without changing its forward.
    hooks = [blk.register_forward_hook(lambda _m, _i, out: taken.append(out[0]))
             for blk in list(visual.blocks)[-last_k:]]
    try:
        visual.forward_tokens(patches)
    finally:
        for hook in hooks:
            hook.remove()
    return [visual.norm(t) for t in taken]


@torch.no_grad()
def encode_images(model, images: torch.Tensor) -> torch.Tensor:
    """Image embeddings.

    Args:
        model: a :class:`DetailCLIP`.
        images: (B, 3, H, W) normalised images on the model's device (:func:`load_images`), at the
            model's size or any multiple of its patch size (see :func:`image_tokens`).

    Returns:
        (B, E) L2-normalised embeddings.
    """
    # Only [CLS] is read: the last block runs for it alone (VisionTransformer.forward_cls).
    return model.embed_cls(model.visual.forward_cls(images, interpolate_pos=True)[:, None])  # (B, D) -> (B, 1, D)


def inference_autocast(model):
    """bf16 autocast on a GPU (the embeddings come back as float32), nothing on the CPU."""
    device = model.logit_scale.device
    dtype = autocast_dtype("auto", device)
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


@torch.no_grad()
def embed_image_batch(model, images: torch.Tensor, which: str = "image") -> torch.Tensor:
    """One batch of images as ``embed`` writes them, in float32 on the CPU.

    Args:
        model: a :class:`DetailCLIP`.
        images: (B, 3, S, S) normalised images on the model's device.
        which: ``image`` for (B, E) L2-normalised embeddings; ``patch`` for (B, L, D) patch
            tokens after the tower's final norm (the features the dense probe reads), not normalised.
    """
    with inference_autocast(model):
        if which == "patch":
            out = image_tokens(model, images)[0][:, 1:]  # (B, 1 + L, D) -> (B, L, D)
        else:
            out = encode_images(model, images)  # (B, E)
    return out.float().cpu()


class ImageEncoder:
    """:func:`embed_image_batch` bound to a model and ``which``, as ``iter_image_batches`` takes it
    (``encode=``): picklable, so ``DataLoader`` workers can run it, and it names its device.

    Args:
        model: a :class:`DetailCLIP`.
        which: ``image`` or ``patch`` (see :func:`embed_image_batch`).
    """

    def __init__(self, model, which: str = "image") -> None:
        self.model, self.which = model, which

    @property
    def device(self) -> torch.device:
        return self.model.logit_scale.device

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) normalised images (any device) -> float32 CPU rows, as :func:`embed_image_batch`."""
        return embed_image_batch(self.model, images.to(self.device), self.which)


@torch.no_grad()
def encode_texts(model, texts: Sequence[str], *, batch_size: int = 256) -> torch.Tensor:
    """Text embeddings, ``batch_size`` texts per text-tower call.

    Args:
        model: a :class:`DetailCLIP`.
        texts: N strings (tokenized with the model's tokenizer, truncated to its context).

    Returns:
        (N, E) L2-normalised float32 embeddings on the model's device (computed under bf16
        autocast on a GPU, as the images are: :func:`inference_autocast`).
    """
    device = model.logit_scale.device
    texts = list(texts)
    with inference_autocast(model):
        out = [model.encode_text(model.tokenize(texts[i:i + batch_size]).to(device)).float()  # (b, E)
               for i in range(0, len(texts), batch_size)]
    return torch.cat(out)


@dataclass
class SetEmbeddings:
    """The image embeddings of an evaluation set's readable images.

    Attributes:
        embeddings: (N, E) L2-normalised, on the CPU.
        indices: (N,) each row's item index in the set (unreadable items are missing).
        labels: (N,) class ids, or None when the set has no labels.
    """

    embeddings: torch.Tensor
    indices: torch.Tensor
    labels: torch.Tensor | None


def eval_transform(model, image_size: int) -> Callable:
    """``EvalSetDataset``'s transform for whole-image tasks: shorter side resized to ``image_size``,
    centre crop, the model's normalisation (label maps are not read)."""
    v = model.cfg.vision
    transform = make_eval_transform(image_size=image_size, mean=v.mean, std=v.std)
    return lambda image, mask, i: {"image": transform(image)}


@torch.no_grad()
def embed_eval_set(model, eval_set, *, image_size: int | None = None, batch_size: int = 64, workers: int = 0,
                   skipped: SkipLog, strict: bool = False,
                   on_batch: Callable[[int], None] | None = None) -> SetEmbeddings:
    """Embed every readable image of an ``EvalSet`` (streamed; unreadable ones skipped and counted).

    Args:
        model: a :class:`DetailCLIP`.
        eval_set: the set.
        image_size: the evaluation resolution (default: the model's own).
        batch_size, workers, skipped, strict, on_batch: as for :func:`eval_batches`.
    """
    # imported on use: the benchmark readers add about 60 ms to `embed` and `search` start-up
    from detailclip_cli.core.data.benchmarks import EvalSetDataset

    size = check_resolution(model, image_size or model.cfg.vision.image_size)
    dataset = EvalSetDataset(eval_set, eval_transform(model, size))
    embs, indices, labels = [], [], []
    # On a CPU the workers encode too, one thread each, as zero-shot's and embed's do.
    for batch in eval_batches(dataset, batch_size=batch_size, workers=workers, skipped=skipped, strict=strict,
                              encode=ImageEncoder(model), on_batch=on_batch):
        embs.append(batch["embedding"])
        indices.append(batch["index"])
        if "label" in batch:
            labels.append(batch["label"])
    e = model.cfg.embed_dim
    return SetEmbeddings(
        embeddings=torch.cat(embs) if embs else torch.zeros(0, e),
        indices=torch.cat(indices) if indices else torch.zeros(0, dtype=torch.long),
        labels=torch.cat(labels) if eval_set.has_labels and labels else None,
    )
