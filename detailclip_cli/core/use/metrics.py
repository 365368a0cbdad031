"""Metrics: accuracy, top-k accuracy, confusion matrices, per-class recall, retrieval recall@k, mIoU."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def accuracy(preds: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of predictions equal to the labels (both (N,) class ids), averaged in float32."""
    return (preds == labels).float().mean().item()


def top_k_accuracy(scores: torch.Tensor, labels: torch.Tensor, k: int = 1) -> float:
    """Fraction of rows whose true label is among the ``k`` highest scores.

    Args:
        scores: (N, C) probabilities or logits.
        labels: (N,) true class indices.
        k: clipped to C.
    """
    k = min(k, scores.shape[1])
    top = scores.topk(k, dim=1).indices  # (N, k)
    return (top == labels.unsqueeze(1)).any(dim=1).double().mean().item()


def confusion_matrix(preds: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(C, C) counts: row = true class, column = predicted class."""
    flat = labels.long() * num_classes + preds.long()
    return torch.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def per_class_recall(confusion: torch.Tensor) -> torch.Tensor:
    """(C,) recall per true class; NaN for classes with no examples."""
    support = confusion.sum(dim=1).double()
    return confusion.diagonal().double() / support  # 0/0 -> nan


def mean_per_class_recall(confusion: torch.Tensor) -> float:
    """Mean recall over the classes that have examples (balanced accuracy)."""
    recall = per_class_recall(confusion)
    present = ~recall.isnan()
    return recall[present].mean().item() if present.any() else float("nan")


def recall_at_k(scores: torch.Tensor, ks: Sequence[int] = (1, 5, 10)) -> dict[int, float]:
    """Recall@k where row i's correct column is i.

    Ties count against the query: the rank of the correct item is the number of *other* items
    scoring at least as high, so a model that scores everything equally gets no credit.

    Args:
        scores: (N, N) similarity of query i with candidate j.
        ks: cut-offs.

    Returns:
        {k: fraction of queries whose correct item ranks within the top k}.
    """
    correct = scores.diagonal().unsqueeze(1)  # (N, 1)
    ahead = (scores >= correct).sum(dim=1) - 1  # (N,) others at least as good
    return {k: (ahead < k).float().mean().item() for k in ks}


def retrieval_metrics(image_emb: torch.Tensor, text_emb: torch.Tensor, text_image: torch.Tensor | None = None,
                      ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """Image-to-text and text-to-image recall@k, with any number of captions per image.

    Image -> text: a hit at k when any of the image's captions ranks in the top k of all
    captions; text -> image: when the caption's image ranks in the top k of all images
    (clip_benchmark's and the Karpathy-split protocol). Ties count against the query, as in
    :func:`recall_at_k`.

    Args:
        image_emb: (N, E) normalised image embeddings.
        text_emb: (M, E) normalised caption embeddings.
        text_image: (M,) the image (row of ``image_emb``) of each caption; None when M = N and
            caption i belongs to image i.
        ks: cut-offs.

    Returns:
        ``image_to_text_R@k`` and ``text_to_image_R@k`` for each k, fractions in [0, 1].
    """
    n, m = image_emb.shape[0], text_emb.shape[0]
    if text_image is None:
        text_image = torch.arange(m)
    scores = image_emb.float() @ text_emb.float().T  # (N, M)
    own = torch.zeros(n, m, dtype=torch.bool)
    own[text_image, torch.arange(m)] = True
    # Image -> text: the image's best caption, and how many foreign captions score at least as high.
    best = scores.masked_fill(~own, float("-inf")).max(dim=1, keepdim=True).values  # (N, 1)
    ahead_i2t = ((scores >= best) & ~own).sum(dim=1)  # (N,)
    # Text -> image: the caption's own image, and how many other images score at least as high.
    correct = scores[text_image, torch.arange(m)].unsqueeze(0)  # (1, M)
    ahead_t2i = (scores >= correct).sum(dim=0) - 1  # (M,)
    return {**{f"image_to_text_R@{k}": (ahead_i2t < k).float().mean().item() for k in ks},
            **{f"text_to_image_R@{k}": (ahead_t2i < k).float().mean().item() for k in ks}}


def segmentation_confusion(pred: torch.Tensor, target: torch.Tensor, num_classes: int,
                           ignore_index: int | None = None) -> torch.Tensor:
    """(C, C) pixel counts, rows = true class, columns = predicted class.

    Pixels labelled ``ignore_index`` (or any value outside ``[0, C)``) are not counted, as
    segmentation toolkits do; summing these over a data set gives its confusion matrix.
    """
    pred, target = pred.reshape(-1), target.reshape(-1)
    keep = (target >= 0) & (target < num_classes)
    if ignore_index is not None:
        keep &= target != ignore_index
    idx = target[keep] * num_classes + pred[keep]
    return torch.bincount(idx, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def miou_from_confusion(confusion: torch.Tensor) -> dict[str, float | list[float | None]]:
    """Mean IoU and pixel accuracy from a segmentation confusion matrix.

    A class that appears neither in the ground truth nor in the predictions has no IoU (it is
    absent, not perfect) and is left out of the mean.

    Returns:
        {"mIoU", "pixel_accuracy", "iou": per-class IoU or None for absent classes}.
    """
    conf = confusion.double()
    tp = conf.diagonal()
    union = conf.sum(0) + conf.sum(1) - tp
    present = union > 0
    iou = torch.where(present, tp / union.clamp(min=1), torch.zeros_like(tp))
    total = conf.sum()
    return {
        "mIoU": iou[present].mean().item() if present.any() else 0.0,
        "pixel_accuracy": (tp.sum() / total).item() if total > 0 else 0.0,
        "iou": [v.item() if p else None for v, p in zip(iou, present)],
    }
