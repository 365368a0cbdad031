"""The dense linear probe: semantic segmentation from frozen patch tokens (the iBOT / BEiT
linear protocol).

A BatchNorm and a 1x1 convolution (a linear map per patch) read the frozen image tower's patch
tokens (the last block's, or the last k concatenated); their logits are upsampled bilinearly to
the label resolution. The head trains for a fixed budget (iterations, learning rate, batch,
crop, seed) on random scaled crops of the training split, streamed through the frozen tower,
so memory is bounded by the batch. Evaluation reads each validation image whole (``resize``)
or in overlapping crops (``slide``), upsamples to the label map's own size, and sums one
confusion matrix over the data set, from which mIoU and pixel accuracy are read (as mmseg).
Position embeddings are resampled for any crop size (exact at the model's own size).

Shape letters: B batch, C classes, D width, k blocks, L patch tokens, P patch size."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from detailclip_cli.core.data.benchmarks import IGNORE_INDEX, EvalSetDataset
from detailclip_cli.core.use.batching import SkipLog, eval_batches
from detailclip_cli.core.use.embed import check_resolution, image_tokens, inference_autocast
from detailclip_cli.core.use.metrics import miou_from_confusion, segmentation_confusion
from detailclip_cli.errors import UsageError, WorkFailedError


class DenseInference(StrEnum):
    """How the dense probe reads a validation image (``--dense-inference``)."""

    slide = "slide"  # shorter side resized to the crop, overlapping crop x crop windows averaged (mmseg's)
    resize = "resize"  # shorter side resized to the crop, the whole image at once


@dataclass(frozen=True, kw_only=True)
class DenseProbeConfig:
    """The dense probe's fixed budget; recorded in the result so numbers are comparable.

    Attributes:
        iterations: optimiser steps of the head.
        lr: AdamW's peak learning rate (poly decay, power 0.9, to 0).
        weight_decay: AdamW's weight decay.
        batch_size: training crops per step.
        crop: side of the training crops and of the inference scale (None: the model's image size).
        last_k: concatenate the patch tokens of the last ``last_k`` blocks.
        scale: range of the random rescaling of the shorter side, in crops.
        flip: random horizontal flips in training.
        inference: ``slide`` or ``resize``.
        stride: the sliding window's step (None: two thirds of the crop).
        seed: the training draws, crops and head initialisation.
    """

    iterations: int = 1000
    lr: float = 1e-3
    weight_decay: float = 1e-4
    batch_size: int = 16
    crop: int | None = None
    last_k: int = 1
    scale: tuple[float, float] = (0.5, 2.0)
    flip: bool = True
    inference: str = DenseInference.slide
    stride: int | None = None
    seed: int = 0

    def resolved(self, model) -> DenseProbeConfig:
        """The settings with the model's defaults filled in, checked against the model."""
        crop = check_resolution(model, self.crop or model.cfg.vision.image_size)
        stride = self.stride or max(1, (2 * crop) // 3)
        if self.inference not in tuple(DenseInference):
            raise UsageError(f"dense inference must be slide or resize, not {self.inference!r}")
        if not 1 <= self.last_k <= model.visual.depth:
            raise UsageError(f"--probe-layers must be in [1, {model.visual.depth}], not {self.last_k}")
        if self.iterations < 1 or self.batch_size < 1 or not self.lr > 0 or not 0 < self.scale[0] <= self.scale[1]:
            raise UsageError("the dense probe needs iterations >= 1, batch >= 1, lr > 0 and 0 < scale low <= high")
        return dataclasses.replace(self, crop=crop, stride=stride, inference=DenseInference(self.inference))

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["scale"] = list(self.scale)
        d["inference"] = str(self.inference)
        return d


class LinearSegHead(nn.Module):
    """BatchNorm + 1x1 convolution over a patch-feature map: a linear classifier per patch."""

    def __init__(self, in_dim: int, num_classes: int):
        super().__init__()
        self.bn = nn.BatchNorm2d(in_dim)
        self.conv = nn.Conv2d(in_dim, num_classes, kernel_size=1)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        """(B, kD, gh, gw) -> (B, C, gh, gw) logits."""
        return self.conv(self.bn(feats))


@torch.no_grad()
def patch_feature_map(model, images: torch.Tensor, last_k: int = 1) -> torch.Tensor:
    """Frozen patch tokens as a float32 feature map: (B, 3, H, W) -> (B, kD, H / P, W / P),
    computed under bf16 autocast on a GPU (:func:`inference_autocast`)."""
    b, _, h, w = images.shape
    p = model.visual.patch_size
    with inference_autocast(model):
        tokens = torch.cat([t[:, 1:] for t in image_tokens(model, images, last_k=last_k)], dim=-1)  # (B, L, kD)
    return tokens.transpose(1, 2).reshape(b, -1, h // p, w // p).float()  # (B, L, kD) -> (B, kD, gh, gw)


# -------------------------------------------------------------------------------- data transforms


def _normalize(image: torch.Tensor, mean, std) -> torch.Tensor:
    """uint8 (3, H, W) -> normalised float (3, H, W)."""
    x = image.float() / 255.0
    return (x - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)


def _resize_pair(image: torch.Tensor, mask: torch.Tensor | None, size: tuple[int, int]):
    image = TF.resize(image, list(size), interpolation=InterpolationMode.BICUBIC, antialias=True)
    if mask is not None:
        mask = TF.resize(mask[None], list(size), interpolation=InterpolationMode.NEAREST)[0]
    return image, mask


def _short_side_to(h: int, w: int, short: int) -> tuple[int, int]:
    ratio = short / min(h, w)
    return max(1, round(h * ratio)), max(1, round(w * ratio))


def train_transform(model, cfg: DenseProbeConfig) -> Callable:
    """Random rescale (shorter side = crop x U(scale)), random crop x crop (padded with the ignore
    label where the image is smaller), random flip; seeded by (seed, draw)."""
    v = model.cfg.vision
    crop = cfg.crop

    def transform(image, mask: np.ndarray, i: int) -> dict:
        rng = np.random.default_rng([cfg.seed, i])
        img = TF.pil_to_tensor(image)  # (3, H, W) uint8
        lab = torch.from_numpy(mask)  # (H, W)
        short = max(1, round(crop * rng.uniform(*cfg.scale)))
        img, lab = _resize_pair(img, lab, _short_side_to(*img.shape[-2:], short))
        h, w = img.shape[-2:]
        x = _normalize(img, v.mean, v.std)
        pad_h, pad_w = max(0, crop - h), max(0, crop - w)
        if pad_h or pad_w:  # zeros are the mean colour once normalised; the labels there are not counted
            x = F.pad(x, (0, pad_w, 0, pad_h))
            lab = F.pad(lab, (0, pad_w, 0, pad_h), value=IGNORE_INDEX)
        top = int(rng.integers(0, x.shape[1] - crop + 1))
        left = int(rng.integers(0, x.shape[2] - crop + 1))
        x, lab = x[:, top:top + crop, left:left + crop], lab[top:top + crop, left:left + crop]
        if cfg.flip and rng.random() < 0.5:
            x, lab = x.flip(-1), lab.flip(-1)
        return {"image": x.contiguous(), "mask": lab.contiguous().long()}

    return transform


def eval_transform(model, cfg: DenseProbeConfig) -> Callable:
    """Shorter side resized to the crop (both sides rounded to the patch size for ``resize``); the
    label map kept at its own resolution."""
    v, p = model.cfg.vision, model.visual.patch_size

    def transform(image, mask: np.ndarray, i: int) -> dict:
        img = TF.pil_to_tensor(image)
        h, w = _short_side_to(*img.shape[-2:], cfg.crop)
        if cfg.inference == DenseInference.resize:
            h, w = max(p, round(h / p) * p), max(p, round(w / p) * p)
        img, _ = _resize_pair(img, None, (h, w))
        return {"image": _normalize(img, v.mean, v.std), "mask": torch.from_numpy(mask).long()}

    return transform


def _as_lists(items: list[dict]) -> dict:
    """Collate images of different sizes as lists."""
    return {"image": [it["image"] for it in items], "mask": [it["mask"] for it in items],
            "index": torch.tensor([it["index"] for it in items])}


# -------------------------------------------------------------------------------- train and apply


def train_dense_head(model, train_set, num_classes: int, cfg: DenseProbeConfig, *, workers: int = 0,
                     skipped: SkipLog, strict: bool = False,
                     on_batch: Callable[[int], None] | None = None) -> LinearSegHead:
    """Train the linear head on ``cfg.iterations`` batches of random crops of ``train_set``.

    Args:
        model: the frozen :class:`DetailCLIP` (eval mode).
        train_set: an ``EvalSet`` with label maps.
        num_classes: C.
        cfg: a :meth:`DenseProbeConfig.resolved` config.
        workers, skipped, strict, on_batch: as for :func:`eval_batches` (``on_batch`` counts crops).
    """
    device = model.logit_scale.device
    g = torch.Generator().manual_seed(cfg.seed)
    draws = torch.randint(len(train_set), (cfg.iterations * cfg.batch_size,), generator=g).tolist()
    dataset = EvalSetDataset(train_set, train_transform(model, cfg), indices=draws)
    torch.manual_seed(cfg.seed)  # the head's initialisation
    head = LinearSegHead(model.visual.width * cfg.last_k, num_classes).to(device)
    opt = torch.optim.AdamW(head.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: (1 - step / cfg.iterations) ** 0.9)
    head.train()
    steps = 0
    for batch in eval_batches(dataset, batch_size=cfg.batch_size, workers=workers, skipped=skipped, strict=strict,
                              on_batch=on_batch):
        masks = batch["mask"].to(device)  # (B, crop, crop)
        if batch["image"].shape[0] < 2 or not (masks != IGNORE_INDEX).any():
            continue  # BatchNorm needs two images; a crop of ignored pixels teaches nothing
        feats = patch_feature_map(model, batch["image"].to(device), cfg.last_k)  # (B, kD, gh, gw)
        logits = F.interpolate(head(feats), size=masks.shape[-2:], mode="bilinear", align_corners=False)
        loss = F.cross_entropy(logits, masks, ignore_index=IGNORE_INDEX)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        steps += 1
    if steps == 0:
        raise WorkFailedError("the dense probe could not train: no readable training batch of 2+ images")
    return head.eval()


@torch.no_grad()
def dense_logits(model, head: LinearSegHead, image: torch.Tensor, cfg: DenseProbeConfig) -> torch.Tensor:
    """Class logits of one (3, h, w) image at its own size, (C, h, w): whole (``resize``) or from
    overlapping crop x crop windows, averaged where they overlap (``slide``)."""
    device = model.logit_scale.device
    x = image.to(device)[None]  # (1, 3, h, w)
    h, w = x.shape[-2:]
    if cfg.inference == DenseInference.resize:
        logits = head(patch_feature_map(model, x, cfg.last_k))
        return F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False)[0]
    crop, stride = cfg.crop, cfg.stride
    if h < crop or w < crop:  # pad to one window; the padding is cut off again below
        x = F.pad(x, (0, max(0, crop - w), 0, max(0, crop - h)))
    hp, wp = x.shape[-2:]
    rows = [min(r * stride, hp - crop) for r in range(math.ceil(max(hp - crop, 0) / stride) + 1)]
    cols = [min(c * stride, wp - crop) for c in range(math.ceil(max(wp - crop, 0) / stride) + 1)]
    total = count = None
    for top in sorted(set(rows)):
        for left in sorted(set(cols)):
            window = x[..., top:top + crop, left:left + crop]
            logits = F.interpolate(head(patch_feature_map(model, window, cfg.last_k)), size=(crop, crop),
                                   mode="bilinear", align_corners=False)[0]  # (C, crop, crop)
            if total is None:
                total = torch.zeros(logits.shape[0], hp, wp, device=device)
                count = torch.zeros(1, hp, wp, device=device)
            total[:, top:top + crop, left:left + crop] += logits
            count[:, top:top + crop, left:left + crop] += 1
    return (total / count)[:, :h, :w]


@torch.no_grad()
def evaluate_dense_head(model, head: LinearSegHead, val_set, num_classes: int, cfg: DenseProbeConfig, *,
                        workers: int = 0, skipped: SkipLog, strict: bool = False,
                        on_batch: Callable[[int], None] | None = None) -> dict:
    """mIoU and pixel accuracy of a trained head on ``val_set``, from the data set's confusion matrix.

    Logits are upsampled bilinearly to each label map's own resolution; ignored pixels are not
    counted; a class absent from both the labels and the predictions has no IoU and is left out
    of the mean.
    """
    dataset = EvalSetDataset(val_set, eval_transform(model, cfg))
    conf = torch.zeros(num_classes, num_classes, dtype=torch.long)
    images = 0
    for batch in eval_batches(dataset, batch_size=4, workers=workers, skipped=skipped, strict=strict,
                              collate=_as_lists, on_batch=on_batch):
        for image, mask in zip(batch["image"], batch["mask"]):
            logits = dense_logits(model, head, image, cfg)  # (C, h, w)
            logits = F.interpolate(logits[None], size=mask.shape, mode="bilinear", align_corners=False)[0]
            conf += segmentation_confusion(logits.argmax(0).cpu(), mask, num_classes, ignore_index=IGNORE_INDEX)
            images += 1
    if images == 0:
        raise WorkFailedError(f"none of the {len(val_set)} validation images could be read")
    metrics = miou_from_confusion(conf)
    return {**metrics, "images": images}


def dense_probe(model, train_set, val_set, cfg: DenseProbeConfig, *, workers: int = 0, skipped: SkipLog,
                strict: bool = False, progress=None) -> dict:
    """Train the head on ``train_set`` and score it on ``val_set``: the ``dense`` task's result.

    Args:
        progress: ``(description, total) -> advance`` (see :func:`run_evaluation`), or None.
    """
    cfg = cfg.resolved(model)
    num_classes = max(train_set.num_mask_classes(), val_set.num_mask_classes())
    step = progress or (lambda _d, _t: None)
    head = train_dense_head(model, train_set, num_classes, cfg, workers=workers, skipped=skipped, strict=strict,
                            on_batch=step("dense probe: train", cfg.iterations * cfg.batch_size))
    metrics = evaluate_dense_head(model, head, val_set, num_classes, cfg, workers=workers, skipped=skipped,
                                  strict=strict, on_batch=step("dense probe: evaluate", len(val_set)))
    names = val_set.mask_classes or train_set.mask_classes
    return {"mIoU": metrics["mIoU"], "pixel_accuracy": metrics["pixel_accuracy"],
            "iou": dict(zip(names, metrics["iou"])) if names else metrics["iou"],
            "num_classes": num_classes,
            "protocol": {"head": "BatchNorm + linear (1x1 conv) on frozen patch tokens", "optimizer": "AdamW",
                         "schedule": "poly 0.9", "upsampling": "bilinear to the label resolution",
                         "ignore_index": IGNORE_INDEX, "metric": "dataset-wide confusion matrix",
                         "train_split": train_set.split, "train_images": len(train_set), **cfg.to_dict()}}
