"""What a model is good for: retrieval, dense (segmentation) linear probe, [CLS] k-NN.

The metrics themselves live in :mod:`detailclip_cli.core.use.metrics`; this module extracts
frozen features with the model, fits the probes and applies them. Zero-shot classification
lives in :mod:`detailclip_cli.core.use.zeroshot`.

Shape letters: N images, E embedding width, L patch tokens, D width, C classes."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from detailclip_cli.core.choices import EVAL_TASKS
from detailclip_cli.core.data import DataError, EvalDataset, class_names, read_samples
from detailclip_cli.core.use.embed import encode_texts
from detailclip_cli.core.use.metrics import accuracy, miou_from_confusion, retrieval_metrics, segmentation_confusion
from detailclip_cli.core.use.templates import resolve_templates
from detailclip_cli.core.use.zeroshot import evaluate_zero_shot
from detailclip_cli.errors import UsageError


def knn_classify(train_feats: torch.Tensor, train_labels: torch.Tensor, test_feats: torch.Tensor,
                 num_classes: int, k: int = 20, temperature: float = 0.07) -> torch.Tensor:
    """Weighted k-NN on cosine similarity (DINO's protocol): votes weighted by exp(sim / T).

    Args:
        train_feats: (N, E) normalised features; train_labels: (N,) class ids.
        test_feats: (M, E) normalised features.

    Returns:
        (M,) predicted class ids.
    """
    sims = test_feats @ train_feats.T  # (M, N)
    k = min(k, train_feats.shape[0])
    top_sims, top_idx = sims.topk(k, dim=1)  # (M, k)
    weights = (top_sims / temperature).exp()
    votes = torch.zeros(test_feats.shape[0], num_classes, dtype=weights.dtype)
    votes.scatter_add_(1, train_labels[top_idx], weights)
    return votes.argmax(dim=1)


@dataclass
class Features:
    """Frozen features of an image set.

    Attributes:
        cls: (N, E) normalised image embeddings.
        patches: (N, L, D) final-layer patch tokens, or None when not asked for.
        masks: (N, H, W) per-pixel class ids, or None when the samples have none.
        labels: (N,) class ids, or None.
    """

    cls: torch.Tensor
    patches: torch.Tensor | None
    masks: torch.Tensor | None
    labels: torch.Tensor | None


@torch.no_grad()
def extract_features(model, samples: Sequence, *, classes: Sequence[str] | None = None,
                     patches: bool = False, batch_size: int = 64,
                     on_batch: Callable[[int], None] | None = None) -> Features:
    """Run the frozen image tower over samples (eval transform), collecting what a probe needs."""
    v = model.cfg.vision
    device = model.logit_scale.device
    dataset = EvalDataset(samples, image_size=v.image_size, mean=v.mean, std=v.std, classes=classes)
    cls, toks, masks, labels = [], [], [], []
    for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False):
        tokens = model.visual(batch["image"].to(device))  # (B, 1 + L, D)
        cls.append(model.embed_cls(tokens).cpu())
        if patches:
            toks.append(tokens[:, 1:].cpu())
        if "mask" in batch:
            masks.append(batch["mask"])
        if "label" in batch:
            labels.append(batch["label"])
        if on_batch is not None:
            on_batch(len(batch["image"]))
    n = sum(len(c) for c in cls)
    return Features(
        cls=torch.cat(cls),
        patches=torch.cat(toks) if patches else None,
        masks=torch.cat(masks) if len(masks) and sum(len(m) for m in masks) == n else None,
        labels=torch.cat(labels) if len(labels) and sum(len(x) for x in labels) == n else None,
    )


def dense_logits(probe: torch.nn.Module, patches: torch.Tensor, grid: tuple[int, int],
                 size: tuple[int, int]) -> torch.Tensor:
    """Per-pixel class logits: a linear layer per patch, then bilinear upsampling.

    Args:
        probe: ``Linear(D, C)``.
        patches: (N, L, D).
        grid: (gh, gw) with gh * gw = L.
        size: (H, W) output resolution.

    Returns:
        (N, C, H, W).
    """
    n = patches.shape[0]
    logits = probe(patches)  # (N, L, C)
    logits = logits.transpose(1, 2).reshape(n, -1, *grid)  # (N, C, gh, gw)
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)


def train_dense_probe(train: Features, num_classes: int, grid: tuple[int, int], *, epochs: int = 30,
                      lr: float = 1e-2, batch_size: int = 128, seed: int = 0) -> torch.nn.Linear:
    """Fit a linear per-patch classifier on frozen patch features against per-pixel masks.

    The features are standardised with their training mean/std first (part of the probe),
    so one learning rate serves every model.
    """
    if train.patches is None or train.masks is None:
        raise ValueError("the dense probe needs patch features and masks")
    g = torch.Generator().manual_seed(seed)
    d = train.patches.shape[-1]
    mean = train.patches.reshape(-1, d).mean(0)
    std = train.patches.reshape(-1, d).std(0) + 1e-6
    linear = torch.nn.Linear(d, num_classes)
    torch.nn.init.zeros_(linear.weight)
    torch.nn.init.zeros_(linear.bias)
    opt = torch.optim.AdamW(linear.parameters(), lr=lr, weight_decay=1e-4)
    size = tuple(train.masks.shape[-2:])
    n = train.patches.shape[0]
    steps = epochs * max(1, n // batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    for _ in range(epochs):
        order = torch.randperm(n, generator=g)
        for start in range(0, n - batch_size + 1 if n >= batch_size else 1, batch_size):
            idx = order[start:start + batch_size]
            x = (train.patches[idx] - mean) / std
            loss = F.cross_entropy(dense_logits(linear, x, grid, size), train.masks[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    # Fold the standardisation into the linear layer: W((x - m) / s) + b.
    with torch.no_grad():
        w = linear.weight / std
        folded = torch.nn.Linear(d, num_classes)
        folded.weight.copy_(w)
        folded.bias.copy_(linear.bias - w @ mean)
    return folded


@torch.no_grad()
def dense_probe_metrics(probe: torch.nn.Module, val: Features, num_classes: int,
                        grid: tuple[int, int]) -> dict:
    """mIoU and pixel accuracy of a trained dense probe on validation features."""
    conf = torch.zeros(num_classes, num_classes, dtype=torch.long)
    size = tuple(val.masks.shape[-2:])
    for start in range(0, val.patches.shape[0], 64):
        logits = dense_logits(probe, val.patches[start:start + 64], grid, size)
        conf += segmentation_confusion(logits.argmax(1), val.masks[start:start + 64], num_classes)
    return miou_from_confusion(conf)


def run_evaluation(model, data: str, *, tasks: Sequence[str] = EVAL_TASKS, templates=None,
                   probe_epochs: int = 20, max_train: int | None = None, seed: int = 0,
                   on_stage: Callable[[str], None] | None = None) -> dict:
    """Evaluate a model on a data spec's ``val`` split (probes train on its ``train`` split).

    Args:
        model: a :class:`DetailCLIP` in eval mode.
        data: a data spec (``demo``, a folder with train/ and val/, ...).
        tasks: any of ``zeroshot`` (needs class labels), ``retrieval`` (needs captions),
            ``dense`` (needs masks), ``probe`` ([CLS] k-NN, needs labels).
        templates: zero-shot prompt templates (callables); None = the data's own or the default.
        probe_epochs: epochs of the dense linear probe.
        max_train: cap on training images for the probes (speed).
        seed: probe seed.
        on_stage: called with a stage name as each starts (progress).

    Returns:
        {task: {metric: value}} for the tasks that the data supports; a task the data cannot
        serve is reported under "skipped" with the reason.
    """
    unknown = sorted(set(tasks) - set(EVAL_TASKS))
    if unknown:
        raise UsageError(f"unknown task(s) {', '.join(unknown)} (choose from {', '.join(EVAL_TASKS)}, all)")
    stage = on_stage or (lambda name: None)
    try:
        val = read_samples(data, split="val")
        classes = class_names(data, split="val")
    except DataError as exc:
        raise UsageError(str(exc)) from None
    labelled = bool(classes) and all(s.label is not None for s in val)
    has_masks = all(s.mask is not None for s in val)
    results: dict = {"skipped": {}}

    needs_train = ("dense" in tasks and has_masks) or ("probe" in tasks and labelled)
    train_feats = val_feats = None
    if needs_train:
        stage("features")
        train = read_samples(data, split="train")
        if max_train is not None:
            train = train[:max_train]
        use_classes = classes if labelled else None
        want_patches = "dense" in tasks and has_masks
        train_feats = extract_features(model, train, classes=use_classes, patches=want_patches)
        val_feats = extract_features(model, val, classes=use_classes, patches=want_patches)

    if "zeroshot" in tasks:
        if labelled:
            stage("zeroshot")
            report = evaluate_zero_shot(model, val, classes, templates or resolve_templates(None, data=data))
            results["zeroshot"] = {"top1": report.top1, "top5": report.top5,
                                   "mean_per_class_recall": report.mean_per_class_recall}
        else:
            results["skipped"]["zeroshot"] = "the data has no class labels"
    if "retrieval" in tasks:
        captions = [s.caption for s in val]
        if all(captions):
            stage("retrieval")
            img = val_feats.cls if val_feats is not None else extract_features(model, val).cls
            results["retrieval"] = retrieval_metrics(img, encode_texts(model, captions).cpu())
        else:
            results["skipped"]["retrieval"] = "some images have no caption"
    if "dense" in tasks:
        if has_masks and train_feats is not None and train_feats.masks is not None:
            stage("dense")
            num_classes = int(max(train_feats.masks.max(), val_feats.masks.max())) + 1
            grid = model.visual.grid_size
            probe = train_dense_probe(train_feats, num_classes, grid, epochs=probe_epochs, seed=seed)
            metrics = dense_probe_metrics(probe, val_feats, num_classes, grid)
            results["dense"] = {"mIoU": metrics["mIoU"], "pixel_accuracy": metrics["pixel_accuracy"],
                                "num_classes": num_classes}
        else:
            results["skipped"]["dense"] = "the data has no masks (<image>.mask.png)"
    if "probe" in tasks:
        if labelled and train_feats is not None and train_feats.labels is not None:
            stage("probe")
            pred = knn_classify(train_feats.cls, train_feats.labels, val_feats.cls, len(classes))
            results["probe"] = {"knn_top1": accuracy(pred, val_feats.labels)}
        else:
            results["skipped"]["probe"] = "the data has no class labels"
    if not results["skipped"]:
        del results["skipped"]
    return results
