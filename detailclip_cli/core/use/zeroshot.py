"""Zero-shot classification: text classifiers from labels and templates, and their evaluation."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader

from detailclip_cli.core.data import DataError, EvalDataset, class_names, read_samples
from detailclip_cli.core.use.metrics import confusion_matrix, mean_per_class_recall, per_class_recall, top_k_accuracy
from detailclip_cli.core.use.templates import TemplateError, as_templates, resolve_templates
from detailclip_cli.errors import UsageError, WorkFailedError


@torch.no_grad()
def build_classifier(model, labels: Sequence[str], templates: Sequence[Callable[[str], str]], *,
                     batch_size: int = 256) -> torch.Tensor:
    """Zero-shot classifier weights: per label, the mean of its normalised template embeddings.

    This is open_clip's ``build_zero_shot_classifier`` (the mean is renormalised), fed our
    tokenizer and whole labels per text-tower call.

    Args:
        model: a :class:`DetailCLIP`.
        labels: C label names (underscores read as spaces in prompts).
        templates: T callables label -> prompt.
        batch_size: prompts per text-encoder call (whole labels per batch).

    Returns:
        (C, E) unit-norm class embeddings.
    """
    import open_clip  # heavy import, only when a classifier is built

    weights = open_clip.build_zero_shot_classifier(
        model, model.tokenize, [label.replace("_", " ") for label in labels], list(templates),
        num_classes_per_batch=max(1, batch_size // len(templates)), device=model.logit_scale.device,
    )  # (E, C)
    # Contiguous like the rows it replaces, so `classify`'s matmul sees the same layout.
    return weights.T.contiguous()  # (E, C) -> (C, E)


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
    image_emb = model.encode_image(images)  # (B, E), unit norm
    logits = model.scale() * image_emb @ classifier.T  # (B, C)
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


def eval_samples(spec: str) -> tuple[list, list[str]]:
    """The labelled samples and class names of an evaluation set (``demo`` = its validation split).

    Raises:
        UsageError: the set has no labels (or cannot be read).
    """
    try:
        samples = read_samples(spec, split="val")
        classes = class_names(spec, split="val")
    except DataError as exc:
        raise UsageError(str(exc)) from None
    labelled = [s for s in samples if s.label is not None]
    if not classes or not labelled:
        raise UsageError(f"{spec} has no class labels (expected one sub-folder per class)")
    return labelled, classes


@torch.no_grad()
def evaluate_zero_shot(model, samples: Sequence, classes: Sequence[str],
                       templates: Sequence[Callable[[str], str]], *, batch_size: int = 64,
                       on_batch: Callable[[int], None] | None = None) -> ZeroShotReport:
    """Zero-shot accuracy of ``model`` on labelled samples, with class names as labels.

    Args:
        model: a :class:`DetailCLIP`.
        samples: ``Sample`` records with labels among ``classes``.
        classes: class names in label order.
        templates: prompt templates.
        batch_size: images per forward pass.
        on_batch: called with the number of images after each batch (progress).
    """
    v = model.cfg.vision
    device = model.logit_scale.device
    classifier = build_classifier(model, classes, templates)
    dataset = EvalDataset(samples, image_size=v.image_size, mean=v.mean, std=v.std, classes=classes)
    all_probs, all_labels = [], []
    try:
        for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False):
            all_probs.append(classify(model, batch["image"].to(device), classifier).cpu())
            all_labels.append(batch["label"])
            if on_batch is not None:
                on_batch(len(batch["label"]))
    except DataError as exc:
        raise WorkFailedError(str(exc)) from None
    probs, labels = torch.cat(all_probs), torch.cat(all_labels)
    conf = confusion_matrix(probs.argmax(dim=1), labels, len(classes))
    return ZeroShotReport(
        classes=list(classes), top1=top_k_accuracy(probs, labels, 1), top5=top_k_accuracy(probs, labels, 5),
        mean_per_class_recall=mean_per_class_recall(conf), confusion=conf, num_images=len(labels),
    )
