"""``evaluate``: a model scored on a data set in the layout it is distributed in, by the
protocols people publish, each task's settings recorded beside its metrics.

================  ======================================  ==========================================
task              needs                                   protocol (its module)
================  ======================================  ==========================================
``zeroshot``      class labels                            templates averaged on normalised text
                                                          embeddings; top-1, top-5, mean per-class
                                                          recall (clip_benchmark) (:mod:`.zeroshot`)
``retrieval``     captions (any number per image)         R@1/5/10 image -> text and text -> image
                                                          (:func:`.metrics.retrieval_metrics`)
``dense``         label maps, and a train split           BN + linear head on frozen patch tokens,
                                                          mIoU / pixel accuracy (:mod:`.dense`)
``probe``         class labels, and a train split         [CLS] k-NN (k = 20, T = 0.07) and a
                                                          logistic regression (:mod:`.cls_probes`)
================  ======================================  ==========================================

Which layout a path is in, and how each is read, is the data layer's
(:mod:`detailclip_cli.core.data.benchmarks`). Images are streamed with ``DataLoader`` workers;
an unreadable image is skipped and counted (``skipped_images`` in the result), or stops the
evaluation with ``strict``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from detailclip_cli.core.choices import EVAL_TASKS
from detailclip_cli.core.data import DataError
from detailclip_cli.core.data.benchmarks import EvalSet, open_eval_set
from detailclip_cli.core.use.batching import SkipLog, default_workers
from detailclip_cli.core.use.cls_probes import knn_probe, logistic_probe
from detailclip_cli.core.use.dense import DenseProbeConfig, dense_probe
from detailclip_cli.core.use.embed import check_resolution, embed_eval_set, encode_texts
from detailclip_cli.core.use.metrics import retrieval_metrics
from detailclip_cli.core.use.templates import templates_for
from detailclip_cli.core.use.zeroshot import zero_shot_report
from detailclip_cli.errors import UsageError, WorkFailedError

# (description, total) -> advance(n): how a caller shows each stage's progress.
Progress = Callable[[str, int], Callable[[int], None] | None]


def run_evaluation(model, data: str, *, tasks: Sequence[str] = EVAL_TASKS, layout: str = "auto",
                   split: str | None = None, limit: int | None = None, templates: str | None = None,
                   image_size: int | None = None, dense: DenseProbeConfig | None = None, batch_size: int = 64,
                   workers: int | None = 0, strict: bool = False, seed: int = 0,
                   progress: Progress | None = None) -> dict:
    """Evaluate a model on one split of a data set (probes train on its ``train`` split).

    Args:
        model: a :class:`DetailCLIP` in eval mode.
        data: ``demo``, or a path in one of the layouts of :class:`~detailclip_cli.core.data.benchmarks.Layout`.
        tasks: any of ``zeroshot``, ``retrieval``, ``dense``, ``probe``.
        layout: a layout name, or ``auto`` to find it from the files.
        split: the evaluated split (None: the one the layout's results are published on).
        limit: evaluate (and train probes on) only the first ``limit`` images of each split.
        templates: ``--templates`` (a set's name or a file); None: the data's own, else its
            layout's, else the default set.
        image_size: the resolution of the whole-image tasks (None: the model's own).
        dense: the dense probe's budget (None: the defaults of :class:`DenseProbeConfig`).
        batch_size: images per forward pass.
        workers: ``DataLoader`` processes (None: :func:`default_workers` for the split and the
            model's device); on a CPU they also encode the images of the embedding passes.
        strict: stop at the first unreadable image (WorkFailedError) instead of skipping it.
        seed: the logistic-regression probe's held-out split.
        progress: shows each stage's progress (see :data:`Progress`).

    Returns:
        ``data`` (layout, split, images, captions, ...), ``train`` (the train split read by the
        probes, when one was), ``resolution``, ``metrics`` ({task: metrics and ``protocol``}),
        ``skipped`` ({task: why the data cannot serve it}), ``skipped_images`` and
        ``skipped_examples`` (unreadable images).

    Raises:
        UsageError: an unknown task, or data that cannot be read as asked.
    """
    unknown = sorted(set(tasks) - set(EVAL_TASKS))
    if unknown:
        raise UsageError(f"unknown task(s) {', '.join(unknown)} (choose from {', '.join(EVAL_TASKS)}, all)")
    stage = progress or (lambda _d, _t: None)
    size = check_resolution(model, image_size or model.cfg.vision.image_size)
    try:
        val = open_eval_set(data, layout=layout, split=split, limit=limit)
    except DataError as exc:
        raise UsageError(str(exc)) from None
    skipped_images = SkipLog()
    if workers is None:
        workers = default_workers(len(val), device=model.logit_scale.device)
    read = {"batch_size": batch_size, "workers": workers, "skipped": skipped_images, "strict": strict}
    record: dict = {"data": val.describe(), "resolution": size, "metrics": {}, "skipped": {}}
    metrics, skipped = record["metrics"], record["skipped"]

    train: EvalSet | None = None
    if ("probe" in tasks and val.has_labels) or ("dense" in tasks and val.has_masks):
        train = _train_split(data, val, limit)
        if train is not None:
            record["train"] = train.describe()

    val_emb = None
    if ("zeroshot" in tasks and val.has_labels) or ("retrieval" in tasks and val.has_captions) \
            or ("probe" in tasks and val.has_labels and train is not None and train.has_labels):
        val_emb = embed_eval_set(model, val, image_size=size, on_batch=stage(f"embed {val.split}", len(val)), **read)
        if not len(val_emb.indices):
            raise WorkFailedError(f"none of the {len(val)} images of {data} could be read")

    if "zeroshot" in tasks:
        if val.has_labels:
            chosen, name = templates_for(templates, val)
            report = zero_shot_report(model, val_emb, val.classes, chosen)
            metrics["zeroshot"] = {"top1": report.top1, "top5": report.top5,
                                   "mean_per_class_recall": report.mean_per_class_recall,
                                   "protocol": {"templates": name, "num_templates": len(chosen),
                                                "num_classes": len(val.classes),
                                                "classifier": "mean of normalised template embeddings, renormalised",
                                                "mean_per_class_recall": "over the classes with images"}}
        else:
            skipped["zeroshot"] = f"the {val.layout} layout has no class labels"
    if "retrieval" in tasks:
        if val.has_captions:
            metrics["retrieval"] = _retrieval(model, val, val_emb)
        else:
            skipped["retrieval"] = f"the {val.layout} layout has no captions"
    if "dense" in tasks:
        if not val.has_masks:
            skipped["dense"] = f"the {val.layout} layout has no label maps"
        elif train is None or not train.has_masks:
            skipped["dense"] = "the data has no train split with label maps to train the probe on"
        else:
            metrics["dense"] = dense_probe(model, train, val, dense or DenseProbeConfig(), workers=workers,
                                           skipped=skipped_images, strict=strict, progress=stage)
    if "probe" in tasks:
        if not val.has_labels:
            skipped["probe"] = f"the {val.layout} layout has no class labels"
        elif train is None or not train.has_labels:
            skipped["probe"] = "the data has no labelled train split to fit the probes on"
        else:
            train_emb = embed_eval_set(model, train, image_size=size,
                                       on_batch=stage(f"embed {train.split}", len(train)), **read)
            args = (train_emb.embeddings, train_emb.labels, val_emb.embeddings, val_emb.labels)
            metrics["probe"] = {"knn": knn_probe(*args, num_classes=len(val.classes)),
                                "logistic": logistic_probe(*args, seed=seed)}
    record["data"]["images_evaluated"] = len(val_emb.indices) if val_emb is not None else None
    record["skipped_images"] = skipped_images.count
    record["skipped_examples"] = skipped_images.examples
    return record


def _train_split(data: str, val: EvalSet, limit: int | None) -> EvalSet | None:
    """The training split beside ``val`` (same layout), or None when the data has none."""
    if val.split in ("train", "training", "train2017"):
        return None  # evaluating the train split itself: a probe would test on what it learnt
    try:
        return open_eval_set(data, layout=val.layout, split="train", limit=limit)
    except DataError:
        return None


def _retrieval(model, val: EvalSet, emb) -> dict:
    """R@1/5/10 both ways over every caption of the readable images."""
    texts, owner = [], []
    for row, index in enumerate(emb.indices.tolist()):
        for caption in val.items[index].captions:
            texts.append(caption)
            owner.append(row)
    text_emb = encode_texts(model, texts).cpu()
    result = retrieval_metrics(emb.embeddings, text_emb, torch.tensor(owner))
    result["protocol"] = {"images": len(emb.indices), "captions": len(texts),
                          "hit": "image->text: any of its captions in the top k; text->image: its image",
                          "ties": "count against the query"}
    return result
