"""Using a trained model: find it, classify zero-shot, look at its attention, reconstruct pixels.

Every function takes a :class:`DetailCLIP` and tensors and returns tensors or small records, so
the CLI only parses options and prints. Model specs (see :func:`resolve_model`) are a run folder,
a model folder, ``open_clip:NAME``, or None for the model shipped in ``assets/``.

Shape letters: B batch, C classes, E embedding width, H heads, L patch tokens, P patch size,
T templates; (gh, gw) is the patch grid.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from detailclip_cli.core.io import CONFIG_FILE, MODEL_FILE, ModelLoadError, load_model
from detailclip_cli.core.losses import normalize_patches, patchify, unpatchify
from detailclip_cli.core.removal import random_scores, remove_tokens
from detailclip_cli.core.vit import reduce_cls_attention
from detailclip_cli.errors import UsageError

SHIPPED_MODEL = "detailclip-tiny"


# -- finding a model -----------------------------------------------------------------------------


def shipped_model_dir() -> Path:
    """``<repo>/assets/detailclip-tiny``: the model used when no ``--model`` is given."""
    import detailclip_cli

    return Path(detailclip_cli.__file__).resolve().parent.parent / "assets" / SHIPPED_MODEL


def resolve_model(spec: str | None, *, pretrained: str | None = None, device: str | torch.device = "cpu"):
    """Load the model a user named.

    Args:
        spec: None (the shipped model), a run folder or model folder (``model.safetensors`` +
            ``config.json``; a path to either file also works), or ``open_clip:NAME``.
        pretrained: for ``open_clip:NAME`` only, a pretrained tag or a local weights file.
        device: where the model lives.

    Returns:
        A :class:`DetailCLIP` in eval mode.

    Raises:
        ModelLoadError: the spec names nothing loadable (the message names it).
        UsageError: ``pretrained`` given for a model that is not ``open_clip:NAME``.
    """
    from detailclip_cli.core.openclip import load_open_clip, open_clip_name

    if spec is not None and (name := open_clip_name(spec)) is not None:
        if not name:
            raise ModelLoadError("open_clip: needs an architecture name, e.g. open_clip:ViT-B-32")
        return load_open_clip(name, pretrained, device=device)
    if pretrained is not None:
        raise UsageError("--pretrained only applies to open_clip:NAME models")
    if spec is None:
        folder = shipped_model_dir()
        if not (folder / MODEL_FILE).is_file() or not (folder / CONFIG_FILE).is_file():
            raise ModelLoadError(f"no --model given and the shipped model assets/{SHIPPED_MODEL} is missing")
        return load_model(folder, device=device)
    return load_model(model_folder(spec), device=device)


def model_folder(spec: str | Path) -> Path:
    """The model folder a path names (the folder itself, or the folder of its weights/config file)."""
    path = Path(spec).expanduser()
    if not path.exists():
        raise ModelLoadError(f"model not found: {spec} (give a run folder, a model folder or open_clip:NAME)")
    if path.is_file() and path.name in (MODEL_FILE, CONFIG_FILE):
        path = path.parent
    if not (path.is_dir() and (path / MODEL_FILE).is_file() and (path / CONFIG_FILE).is_file()):
        raise ModelLoadError(
            f"{spec} is not a model (expected a folder with {MODEL_FILE} and {CONFIG_FILE}, or open_clip:NAME)"
        )
    return path


def local_model_folder(spec: str | None) -> Path | None:
    """The folder of a local model spec; None for ``open_clip:NAME`` or a path naming no model."""
    from detailclip_cli.core.openclip import open_clip_name

    if spec is not None and open_clip_name(spec) is not None:
        return None
    try:
        return shipped_model_dir() if spec is None else model_folder(spec)
    except ModelLoadError:
        return None


def has_decoder(spec: str | None) -> bool:
    """Whether the model a spec names has a pixel decoder, read from its config (no weights loaded).

    ``open_clip:NAME`` models never have one. A spec that names no model reports True here
    and fails properly when it is loaded.
    """
    from detailclip_cli.core.io import read_model_config
    from detailclip_cli.core.openclip import open_clip_name

    if spec is not None and open_clip_name(spec) is not None:
        return False
    folder = local_model_folder(spec)
    try:
        return folder is None or read_model_config(folder).decoder is not None
    except ModelLoadError:
        return True


def run_train_settings(spec: str | None) -> dict | None:
    """The training settings of a run folder (its ``run.json``); None for any other model."""
    from detailclip_cli.core.config import ConfigError
    from detailclip_cli.core.train import read_run_settings

    folder = local_model_folder(spec)
    if folder is None:
        return None
    try:
        _, train_cfg, _ = read_run_settings(folder)
    except (ConfigError, ModelLoadError, OSError, ValueError, KeyError):
        return None
    return train_cfg.to_dict()


# -- images in, tensors out ------------------------------------------------------------------------


@dataclass
class ImageBatch:
    """Images that loaded, and the ones that did not.

    Attributes:
        paths: the loaded images' paths, in input order.
        images: (B, 3, S, S) normalised tensors (S = the model's image size); None when none loaded.
        errors: ``(path, message)`` for each input that could not be read.
    """

    paths: list[Path]
    images: torch.Tensor | None
    errors: list[tuple[Path, str]]


def iter_image_batches(paths: Sequence[Path], *, image_size: int, mean: Sequence[float],
                       std: Sequence[float], batch_size: int = 32) -> Iterator[ImageBatch]:
    """Load, resize (shorter side, then centre crop) and normalise images, ``batch_size`` at a time.

    Unreadable files are reported in ``errors``, never raised, so one bad file does not stop
    the rest.
    """
    from detailclip_cli.core.data import DataError, load_image, make_eval_transform

    transform = make_eval_transform(image_size=image_size, mean=mean, std=std)
    for start in range(0, len(paths), batch_size):
        ok, tensors, errors = [], [], []
        for path in paths[start:start + batch_size]:
            try:
                tensors.append(transform(load_image(path)))
            except DataError as exc:
                errors.append((Path(path), str(exc)))
                continue
            ok.append(Path(path))
        yield ImageBatch(ok, torch.stack(tensors) if tensors else None, errors)


def to_pixels(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Undo the input normalisation: (B, 3, H, W) normalised -> (B, 3, H, W) pixels in [0, 1]."""
    m = torch.tensor(mean, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    return (images * s + m).clamp(0.0, 1.0)


# -- zero-shot classification ------------------------------------------------------------------------

DEFAULT_TEMPLATES = (
    "a photo of a {}.",
    "a picture of a {}.",
    "an image of a {}.",
    "a close-up photo of a {}.",
    "a photo of the {}.",
    "a drawing of a {}.",
)


class TemplateError(UsageError, ValueError):
    """Templates or labels that cannot be used; one line for people."""


def template_sets() -> dict[str, Sequence[Callable[[str], str]]]:
    """The named template sets: ``default`` (ours), ``demo`` (the demo digits), open_clip's ImageNet sets."""
    import open_clip

    from detailclip_cli.core.data.demo import ZERO_SHOT_TEMPLATES

    return {
        "default": [_fill(t) for t in DEFAULT_TEMPLATES],
        "demo": [_fill(t) for t in ZERO_SHOT_TEMPLATES],
        "openai_imagenet": list(open_clip.OPENAI_IMAGENET_TEMPLATES),
        "simple_imagenet": list(open_clip.SIMPLE_IMAGENET_TEMPLATES),
    }


def _fill(template: str) -> Callable[[str], str]:
    # replace, not str.format: a template may contain other braces.
    return lambda name: template.replace("{}", name)


def resolve_templates(spec: str | None, *, data: str | None = None) -> list[Callable[[str], str]]:
    """Templates by name (``default``, ``demo``, ``openai_imagenet``, ``simple_imagenet``) or from a file.

    With no ``spec``, the demo data (``data == "demo"``) gets its own set and anything else
    the default set.

    A template file has one template per line, each containing ``{}`` where the label goes;
    blank lines and lines starting with ``#`` are skipped.

    Returns:
        Callables mapping a label to a prompt.
    """
    sets = template_sets()
    if spec is None:
        return list(sets["demo" if data == "demo" else "default"])
    if spec in sets:
        return list(sets[spec])
    path = Path(spec).expanduser()
    if not path.is_file():
        raise TemplateError(f"--templates {spec}: not a template set ({', '.join(sets)}) nor a file")
    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    lines = [line for line in lines if line and not line.startswith("#")]
    if not lines:
        raise TemplateError(f"template file {path} has no templates")
    bad = [line for line in lines if "{}" not in line]
    if bad:
        raise TemplateError(f"template {bad[0]!r} in {path} has no {{}} where the label goes")
    return [_fill(line) for line in lines]


def parse_labels(text: str, *, source: str = "--labels", one_per_line: bool = False) -> list[str]:
    """Split labels on commas (or only on line breaks, for label files), dropping blanks.

    Raises:
        TemplateError: no labels, or a label given twice.
    """
    lines = text.splitlines()
    labels = [p.strip() for line in lines for p in ([line] if one_per_line else line.split(","))]
    labels = [label for label in labels if label]
    if not labels:
        raise TemplateError(f"{source} gave no labels")
    seen = set()
    for label in labels:
        if label in seen:
            raise TemplateError(f"{source} names the label {label!r} twice")
        seen.add(label)
    return labels


@torch.no_grad()
def build_classifier(model, labels: Sequence[str], templates: Sequence[Callable[[str], str]], *,
                     batch_size: int = 256) -> torch.Tensor:
    """Zero-shot classifier weights: per label, the mean of its normalised template embeddings.

    Args:
        model: a :class:`DetailCLIP`.
        labels: C label names (underscores read as spaces in prompts).
        templates: T callables label -> prompt.
        batch_size: prompts per text-encoder call (whole labels per batch).

    Returns:
        (C, E) unit-norm class embeddings.
    """
    device = model.logit_scale.device
    per_batch = max(1, batch_size // len(templates))
    rows = []
    for start in range(0, len(labels), per_batch):
        names = [label.replace("_", " ") for label in labels[start:start + per_batch]]
        prompts = [t(name) for name in names for t in templates]  # label-major
        emb = model.encode_text(model.tokenize(prompts).to(device))  # (c*T, E), unit norm
        emb = emb.reshape(len(names), len(templates), -1).mean(dim=1)  # (c, T, E) -> (c, E)
        rows.append(F.normalize(emb, dim=-1))
    return torch.cat(rows)


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


# -- evaluation metrics (pure functions) -----------------------------------------------------------


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
    from detailclip_cli.core.data import DataError, class_names, read_samples

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
    from torch.utils.data import DataLoader

    from detailclip_cli.core.data import DataError, EvalDataset

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
        from detailclip_cli.errors import WorkFailedError

        raise WorkFailedError(str(exc)) from None
    probs, labels = torch.cat(all_probs), torch.cat(all_labels)
    conf = confusion_matrix(probs.argmax(dim=1), labels, len(classes))
    return ZeroShotReport(
        classes=list(classes), top1=top_k_accuracy(probs, labels, 1), top5=top_k_accuracy(probs, labels, 5),
        mean_per_class_recall=mean_per_class_recall(conf), confusion=conf, num_images=len(labels),
    )


# -- attention maps ----------------------------------------------------------------------------------


@dataclass
class AttentionMaps:
    """The [CLS]-to-patch attention the model uses to choose tokens, and the removal it gives.

    Attributes:
        per_head: (B, H, gh, gw) the chosen layer(s)' attention per head.
        scores: (B, gh, gw) the removal scores (mean over heads), exactly as pretraining uses them.
        removed: (B, gh, gw) bool, True where :func:`remove_tokens` drops the patch.
    """

    per_head: torch.Tensor
    scores: torch.Tensor
    removed: torch.Tensor


def check_removal(model, keep_ratio: float, block_size: int) -> None:
    """Raise a one-line UsageError when ``keep_ratio`` / ``block_size`` do not fit the model."""
    if not 0.0 < keep_ratio <= 1.0:
        raise UsageError(f"--keep-ratio must be in (0, 1], got {keep_ratio}")
    gh, gw = model.visual.grid_size
    if block_size < 1 or gh % block_size or gw % block_size:
        raise UsageError(f"--block-size {block_size} does not divide the model's {gh}x{gw} patch grid")


def default_block_size(model, preferred: int = 2) -> int:
    """``preferred`` when it divides the patch grid, else 1."""
    gh, gw = model.visual.grid_size
    return preferred if preferred >= 1 and gh % preferred == 0 and gw % preferred == 0 else 1


def check_layer(model, layer: str | int) -> str | int:
    """Validate a ``mean`` / ``last`` / index layer choice against the model's depth."""
    if layer in ("mean", "last"):
        return layer
    try:
        index = int(layer)
    except (TypeError, ValueError):
        raise UsageError(f"--layer must be mean, last or a block index, not {layer!r}") from None
    depth = model.visual.depth
    if not -depth <= index < depth:
        raise UsageError(f"--layer {index} is out of range for a {depth}-block model")
    return index


@torch.no_grad()
def attention_maps(model, images: torch.Tensor, *, layer: str | int = "mean", keep_ratio: float = 0.5,
                   block_size: int = 1) -> AttentionMaps:
    """[CLS] attention maps and the token removal they produce, as in pretraining.

    Scores come from ``visual.cls_attention`` reduced with ``reduce_cls_attention`` and averaged
    over heads (what ``forward_with_scores`` gives the objective), and the mask is
    ``remove_tokens`` at ``keep_ratio`` / ``block_size``: the picture is the map that chooses.

    Args:
        model: a :class:`DetailCLIP`.
        images: (B, 3, S, S) normalised images.
        layer: ``mean`` over blocks, ``last``, or a block index.
        keep_ratio: fraction of patches kept.
        block_size: removal decides per block_size x block_size patch block.
    """
    visual = model.visual
    gh, gw = visual.grid_size
    per_layer = visual.cls_attention(images)  # (B, depth, H, L)
    per_head = reduce_cls_attention(per_layer, layer)  # (B, H, L)
    scores = per_head.mean(dim=1)  # (B, L)
    patches = visual.embed_patches(images)  # (B, L, D)
    removal = remove_tokens(patches, scores, keep_ratio, grid=(gh, gw), block_size=block_size)
    b, h = per_head.shape[:2]
    return AttentionMaps(
        per_head=per_head.reshape(b, h, gh, gw),  # (B, H, L) -> (B, H, gh, gw)
        scores=scores.reshape(b, gh, gw),
        removed=removal.mask.reshape(b, gh, gw),
    )


# -- pixel reconstruction ----------------------------------------------------------------------------


@dataclass
class Reconstruction:
    """Decoder output mapped back to pixels, with the panels people look at.

    All images are (B, 3, S, S) pixels in [0, 1].

    Attributes:
        original: the model's view of the input.
        kept: the original with removed patches greyed out.
        recon: the decoder's prediction for every patch.
        pasted: the prediction at removed patches, the original at kept ones.
        removed: (B, gh, gw) bool, True where the patch was removed.
        mse: (B,) mean squared error on removed patches, in [0, 1] pixel units.
        psnr: (B,) 10 log10(1 / mse), in dB.
    """

    original: torch.Tensor
    kept: torch.Tensor
    recon: torch.Tensor
    pasted: torch.Tensor
    removed: torch.Tensor
    mse: torch.Tensor
    psnr: torch.Tensor


class NoDecoderError(UsageError):
    """The model has no pixel decoder."""


@torch.no_grad()
def reconstruct(model, images: torch.Tensor, *, strategy: str = "attention", keep_ratio: float = 0.5,
                block_size: int = 1, layer: str | int = "mean", generator: torch.Generator | None = None,
                norm_pix: bool = True) -> Reconstruction:
    """Remove tokens, encode the rest, and let the decoder fill the gaps.

    Args:
        model: a :class:`DetailCLIP` with a decoder.
        images: (B, 3, S, S) normalised images.
        strategy: ``attention`` (the model's own [CLS] scores) or ``random`` (scores from
            ``generator``).
        keep_ratio: fraction of patches kept.
        block_size: removal block side, in patches.
        layer: which attention layer(s) score patches for ``attention``.
        generator: seeded generator for ``random``.
        norm_pix: the decoder was trained against per-patch normalised targets, so its output
            is mapped back with each true patch's mean and std (the paper's default, and ours).
    """
    if model.decoder is None:
        raise NoDecoderError("this model has no pixel decoder (trained with --no-reconstruct, or an "
                             "open_clip model), so it cannot reconstruct")
    if strategy not in ("attention", "random"):
        raise UsageError(f"--strategy must be attention or random, not {strategy!r}")
    visual, v = model.visual, model.cfg.vision
    grid, p = visual.grid_size, visual.patch_size
    b = images.shape[0]
    patches = visual.embed_patches(images)  # (B, L, D)
    if strategy == "attention":
        scores = reduce_cls_attention(visual.cls_attention(images), layer).mean(dim=1)  # (B, L)
    else:
        scores = random_scores(b, patches.shape[1], generator=generator, device=images.device)
    removal = remove_tokens(patches, scores, keep_ratio, grid=grid, block_size=block_size)
    latent, _ = visual.forward_tokens(removal.kept)  # (B, 1 + K, D)
    pred, _ = model.decoder(latent, removal.ids_restore)  # (B, L, P*P*3)

    target = patchify(images, p)  # (B, L, P*P*3), normalised-image units
    if norm_pix:
        _, mean, std = normalize_patches(target)
        pred = pred * std + mean  # back from per-patch normalised units
    recon = to_pixels(unpatchify(pred, p, grid), v.mean, v.std)  # (B, 3, S, S)
    original = to_pixels(images, v.mean, v.std)

    removed = removal.mask.reshape(b, *grid)  # (B, gh, gw)
    # (B, gh, gw) -> (B, 1, S, S): each patch's flag over its P x P pixels.
    pixel_mask = removed[:, None].repeat_interleave(p, dim=2).repeat_interleave(p, dim=3)
    pasted = torch.where(pixel_mask, recon, original)
    kept = torch.where(pixel_mask, torch.full_like(original, 0.5), original)
    counted = pixel_mask if removal.mask.any() else torch.ones_like(pixel_mask)
    weight = counted.expand_as(original).float()
    mse = ((recon - original).pow(2) * weight).sum(dim=(1, 2, 3)) / weight.sum(dim=(1, 2, 3)).clamp(min=1)
    psnr = 10 * torch.log10(1.0 / mse.clamp(min=1e-10))
    return Reconstruction(original, kept, recon, pasted, removed, mse, psnr)
