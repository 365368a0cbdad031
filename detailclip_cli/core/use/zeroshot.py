"""Zero-shot classification: text classifiers from labels and templates, and their evaluation."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from detailclip_cli.core.use.batching import SkipLog
from detailclip_cli.core.use.embed import embed_eval_set, inference_autocast
from detailclip_cli.core.use.metrics import (
    confusion_matrix,
    mean_per_class_recall,
    per_class_recall,
    top_k_accuracy,
)
from detailclip_cli.core.use.templates import (
    TemplateError,
    as_templates,
    resolve_templates,
)
from detailclip_cli.errors import UsageError, WorkFailedError


@torch.no_grad()
def build_classifier(model, labels: Sequence[str], templates: Sequence[Callable[[str], str]], *,
                     batch_size: int = 256) -> torch.Tensor:
    """Zero-shot classifier weights: per label, the mean of its normalised template embeddings.

    open_clip's ``build_zero_shot_classifier`` (the same arithmetic, in the same order), fed our
    tokenizer and whole labels per text-tower call; written here so that zero-shot never imports
    open_clip.

    Args:
        model: a :class:`DetailCLIP`.
        labels: C label names (underscores read as spaces in prompts).
        templates: T callables label -> prompt.
        batch_size: prompts per text-encoder call (whole labels per batch).

    Returns:
        (C, E) unit-norm class embeddings.
    """
    device = model.logit_scale.device
    names = [label.replace("_", " ") for label in labels]
    per_call = max(1, batch_size // len(templates))
    rows = []
    for start in range(0, len(names), per_call):
        chunk = names[start:start + per_call]
        prompts = [template(name) for name in chunk for template in templates]
        emb = model.encode_text(model.tokenize(prompts).to(device), normalize=True)  # (c * T, E)
        emb = emb.reshape(len(chunk), len(templates), -1).mean(dim=1)  # (c, T, E) -> (c, E)
        rows.append(emb / emb.norm(dim=1, keepdim=True))
    return torch.cat(rows).contiguous()  # (C, E)


@torch.no_grad()
def classify(model, images: torch.Tensor, classifier: torch.Tensor) -> torch.Tensor:
    """Class probabilities: softmax over labels of ``logit_scale * cosine(image, label)``.

    Args:
        model: a :class:`DetailCLIP`.
        images: (B, 3, S, S) normalised images.
        classifier: (C, E) from :func:`build_classifier`.

    Returns:
        (B, C) probabilities (rows sum to 1).
    """
    with inference_autocast(model):  # bf16 on a GPU
        image_emb = model.encode_image(images).float()  # (B, E), unit norm
    return class_probabilities(model, image_emb, classifier)


@torch.no_grad()
def class_probabilities(model, image_emb: torch.Tensor, classifier: torch.Tensor) -> torch.Tensor:
    """:func:`classify` from image embeddings already made (``encode_images``, ``ImageEncoder``).

    Args:
        model: a :class:`DetailCLIP` (its logit scale).
        image_emb: (B, E) unit-norm image embeddings, on any device.
        classifier: (C, E) from :func:`build_classifier`.

    Returns:
        (B, C) probabilities on the classifier's device.
    """
    logits = model.scale() * image_emb.float().to(classifier.device) @ classifier.float().T  # (B, C)
    return logits.float().softmax(dim=-1)


def zero_shot(model, images: torch.Tensor, labels: Sequence[str],
              templates: Sequence[str | Callable[[str], str]] | None = None) -> torch.Tensor:
    """Probabilities of each image over free-text labels.

    Args:
        model: a :class:`DetailCLIP`.
        images: (B, 3, S, S) normalised images on the model's device (:func:`load_images`).
        labels: C label names.
        templates: prompts with ``{}`` where the label goes (or callables label -> prompt);
            None = the default set.

    Returns:
        (B, C) probabilities (rows sum to 1).
    """
    if not labels:
        raise TemplateError("no labels given")
    chosen = resolve_templates(None) if templates is None else as_templates(templates)
    return classify(model, images, build_classifier(model, labels, chosen))


@dataclass
class ZeroShotReport:
    """Zero-shot results on a labelled set.

    Attributes:
        classes: C class names, in label order.
        top1, top5, mean_per_class_recall: the headline metrics (fractions in [0, 1]).
        confusion: (C, C) counts, rows = true, columns = predicted.
        num_images: N.
    """

    classes: list[str]
    top1: float
    top5: float
    mean_per_class_recall: float
    confusion: torch.Tensor
    num_images: int

    def per_class(self) -> list[dict]:
        """One record per class: support, correct, recall, precision."""
        recall = per_class_recall(self.confusion)
        predicted = self.confusion.sum(dim=0)
        rows = []
        for k, name in enumerate(self.classes):
            support, correct = int(self.confusion[k].sum()), int(self.confusion[k, k])
            rows.append({
                "class": name, "support": support, "correct": correct,
                "recall": None if math.isnan(recall[k]) else float(recall[k]),
                "precision": correct / int(predicted[k]) if predicted[k] else None,
            })
        return rows

    def to_dict(self) -> dict:
        return {
            "num_images": self.num_images, "num_classes": len(self.classes),
            "top1": self.top1, "top5": self.top5, "mean_per_class_recall": self.mean_per_class_recall,
            "classes": self.classes, "per_class": self.per_class(),
            "confusion_matrix": self.confusion.tolist(),
        }


@torch.no_grad()
def evaluate_zero_shot(model, eval_set, templates: Sequence[Callable[[str], str]], *, image_size: int | None = None,
                       batch_size: int = 64, workers: int = 0, skipped: SkipLog | None = None, strict: bool = False,
                       on_batch: Callable[[int], None] | None = None) -> ZeroShotReport:
    """Zero-shot accuracy of ``model`` on a labelled ``EvalSet``, with its class names as labels.

    The protocol of clip_benchmark: each class's text embedding is the renormalised mean of its
    normalised template embeddings; top-1 and top-5 accuracy; mean per-class recall (balanced
    accuracy) over the classes that have images.

    Args:
        model: a :class:`DetailCLIP`.
        eval_set: an ``EvalSet`` with labels (``eval_set.has_labels``).
        templates: prompt templates.
        image_size: the evaluation resolution (default: the model's own).
        batch_size: images per forward pass; workers: ``DataLoader`` processes.
        skipped: where unreadable images are counted (they are left out of every metric).
        strict: stop at the first unreadable image instead.
        on_batch: called with the number of images after each batch (progress).

    Raises:
        UsageError: the set has no class labels. WorkFailedError: no image could be read, or
        ``strict`` and one could not.
    """
    if not eval_set.has_labels:
        raise UsageError(f"{eval_set.root} ({eval_set.layout}) has no class labels")
    skipped = skipped if skipped is not None else SkipLog()
    classifier = build_classifier(model, eval_set.classes, templates)
    emb = embed_eval_set(model, eval_set, image_size=image_size, batch_size=batch_size, workers=workers,
                         skipped=skipped, strict=strict, on_batch=on_batch)
    if emb.labels is None or not len(emb.labels):
        raise WorkFailedError(f"none of the {len(eval_set)} images could be read")
    return zero_shot_report(model, emb, eval_set.classes, templates, classifier=classifier)


@torch.no_grad()
def zero_shot_report(model, emb, classes: Sequence[str], templates: Sequence[Callable[[str], str]], *,
                     classifier: torch.Tensor | None = None) -> ZeroShotReport:
    """The zero-shot metrics of already embedded images (``SetEmbeddings`` with labels).

    Args:
        model: the :class:`DetailCLIP` that embedded them (its text tower and logit scale).
        emb: (N, E) embeddings and (N,) labels.
        classes: C class names; templates: the prompts.
        classifier: (C, E) from :func:`build_classifier`, when already built.
    """
    if classifier is None:
        classifier = build_classifier(model, classes, templates)
    logits = model.scale().cpu().float() * emb.embeddings @ classifier.cpu().float().T  # (N, C)
    probs, labels = logits.softmax(dim=-1), emb.labels
    conf = confusion_matrix(probs.argmax(dim=1), labels, len(classes))
    return ZeroShotReport(
        classes=list(classes), top1=top_k_accuracy(probs, labels, 1), top5=top_k_accuracy(probs, labels, 5),
        mean_per_class_recall=mean_per_class_recall(conf), confusion=conf, num_images=len(labels),
    )
