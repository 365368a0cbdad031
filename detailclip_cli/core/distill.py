"""Distillation: train an image tower from a teacher, from images alone (no captions needed).

Two objectives, both trained by the loop of :mod:`detailclip_cli.core.train` (:func:`fit`):

- :class:`SelfDistillObjective` (no teacher given): DetailCLIP's image half alone. An EMA copy
  of the student chooses the kept tokens by its [CLS] attention and gives the iBOT [CLS] and
  patch targets; the decoder reconstructs the removed pixels. The text tower is not trained.
- :class:`FrozenTeacherObjective` (a trained teacher): the frozen teacher's [CLS] attention
  chooses the tokens the student keeps; the student matches the teacher's image embedding in
  the shared image-text space (cosine), the teacher's patch features at kept and removed
  positions (cosine, through learned linear bridges, as the widths may differ), and
  reconstructs pixels. The student takes over the teacher's text tower and logit scale, so the
  saved student is a complete CLIP model; the bridges stay in the training state.

Both take DINO's multi-crop: ``local_crops`` small views per image that the student sees whole
and must map to the teacher's [CLS] target of both global views.

Shape letters: B batch, V global views (2), N local crops, L patch tokens, K kept tokens,
D width (Ds student, Dt teacher), E embedding width, C prototypes, P patch size.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from detailclip_cli.core.collapse import CollapseMonitor, embedding_spread, teacher_entropy
from detailclip_cli.core.config import ConfigError, ModelConfig, TrainConfig, VisionConfig
from detailclip_cli.core.data import (
    AugmentConfig,
    DataError,
    Sample,
    TwoViewDataset,
    image_files,
    item_seed,
    make_view_transform,
    read_samples,
)
from detailclip_cli.core.data.shards import ShardDataset, streams_shards
from detailclip_cli.core.distributed import BatchShard, join_process_group
from detailclip_cli.core.losses import patchify, reconstruction_loss
from detailclip_cli.core.model import DetailCLIP
from detailclip_cli.core.objective import NUM_VIEWS, DetailCLIPObjective
from detailclip_cli.core.removal import Removal
from detailclip_cli.core.train import (
    RUN_FILE,
    TrainingRun,
    check_batch_fits,
    fit,
    resolve_device,
    seed_everything,
    train_augment,
)

# DINO's local crops: 5-35 % of the image, at 3/7 of the global side (96 px for 224 px globals).
LOCAL_CROP_SCALE = (0.05, 0.35)
LOCAL_SIZE_FRACTION = 3 / 7
LOCAL_BLUR = 0.5
# Local views draw from their own random stream, so adding them leaves the global views as they were.
_LOCAL_STREAM = 0x10CA1


# -- data: images without captions, and local crops -----------------------------------------------


def image_samples(data: str | Path, *, split: str = "train") -> list[Sample]:
    """The images of a data spec, with or without captions (distillation never reads them).

    ``demo`` and CSV/TSV files are read as for pretraining. A folder is searched recursively
    for images (its ``split`` sub-folder when it has one), each given an empty caption, so a
    plain folder of photos works.

    Raises:
        DataError: the spec is missing or holds no images.
    """
    path = Path(data).expanduser()
    if str(data) == "demo" or not path.is_dir():
        return read_samples(data, split=split)  # names what is wrong with a missing path or file
    folder = path / split if split and (path / split).is_dir() else path
    images = image_files(folder)  # each real folder once: links cannot loop
    if not images:
        raise DataError(f"no images found in {folder}")
    return [Sample(image=image, caption="") for image in sorted(images)]


def local_crop_size(image_size: int, patch_size: int) -> int:
    """The side of local crops: 3/7 of the global side, rounded up to whole patches."""
    return patch_size * math.ceil(image_size * LOCAL_SIZE_FRACTION / patch_size)


class MultiCropDataset(TwoViewDataset):
    """Two global views plus ``local_crops`` small local views of each image (DINO's multi-crop).

    Local views are random resized crops of ``LOCAL_CROP_SCALE`` of the image at ``local_size``
    px, with the global views' colour augmentation and blur half the time. Their random draws
    depend only on ``(seed, epoch, index)``, from a stream of their own, so resumed runs see the
    same crops and ``local_crops=0`` gives exactly the items of a :class:`TwoViewDataset`.

    Args:
        samples, image_size, mean, std, aug, tokenize, seed: as for :class:`TwoViewDataset`.
        local_crops: N local views per item (0 = none).
        local_size: their side in pixels (a multiple of the patch size).
    """

    def __init__(self, samples: Sequence[Sample] | None, *, image_size: int, mean: Sequence[float],
                 std: Sequence[float], aug: AugmentConfig, tokenize, seed: int, local_crops: int = 0,
                 local_size: int):
        super().__init__(samples, image_size=image_size, mean=mean, std=std, aug=aug, tokenize=tokenize, seed=seed)
        self.local_crops = int(local_crops)
        local_aug = dataclasses.replace(aug, crop_scale=LOCAL_CROP_SCALE, blur=(LOCAL_BLUR, LOCAL_BLUR),
                                        solarize=(0.0, 0.0))
        self.local = make_view_transform(image_size=local_size, mean=mean, std=std, aug=local_aug, view=1)

    def make_item(self, image, i: int, caption: str) -> dict[str, torch.Tensor]:
        """A :class:`TwoViewDataset` item plus ``local_views`` (N, 3, h, h) when N > 0."""
        item = super().make_item(image, i, caption)
        if self.local_crops:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(item_seed(self.seed, self.epoch, i) ^ _LOCAL_STREAM)
                item["local_views"] = torch.stack([self.local(image) for _ in range(self.local_crops)])
        return item


# -- tensor helpers ------------------------------------------------------------------------------


def resample_grid(x: torch.Tensor, src: tuple[int, int], dst: tuple[int, int]) -> torch.Tensor:
    """Resample per-patch values from one patch grid to another (bilinear, antialiased).

    Args:
        x: (B, gh * gw, C) values in row-major grid order.
        src: (gh, gw) grid of ``x``.
        dst: (gh', gw') wanted grid.

    Returns:
        (B, gh' * gw', C); ``x`` itself when the grids are equal.
    """
    if tuple(src) == tuple(dst):
        return x
    b, _, c = x.shape
    image = x.transpose(1, 2).reshape(b, c, *src)  # (B, L, C) -> (B, C, gh, gw)
    image = F.interpolate(image.float(), size=tuple(dst), mode="bilinear", align_corners=False, antialias=True)
    return image.reshape(b, c, -1).transpose(1, 2).to(x.dtype)  # -> (B, L', C)


def convert_images(images: torch.Tensor, src: VisionConfig, dst: VisionConfig) -> torch.Tensor:
    """Re-express images normalised for one image tower as another tower's input.

    Args:
        images: (B, 3, S, S) normalised with ``src.mean`` / ``src.std``.
        src: the vision config the images were made for.
        dst: the vision config of the tower that will read them.

    Returns:
        (B, 3, S', S') at ``dst.image_size`` (bicubic, antialiased), normalised for ``dst``.
    """
    same_stats = tuple(src.mean) == tuple(dst.mean) and tuple(src.std) == tuple(dst.std)
    if same_stats and src.image_size == dst.image_size:
        return images

    def stats(values) -> torch.Tensor:
        return torch.tensor(values, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)

    x = images if same_stats else images * stats(src.std) + stats(src.mean)
    if src.image_size != dst.image_size:
        size = (dst.image_size, dst.image_size)
        x = F.interpolate(x, size=size, mode="bicubic", align_corners=False, antialias=True)
    return x if same_stats else (x - stats(dst.mean)) / stats(dst.std)


def cosine_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """1 - cosine similarity along the last dimension, broadcasting: (..., D), (..., D) -> (...)."""
    return 1.0 - F.cosine_similarity(a.float(), b.float(), dim=-1)


def pooled_mean(*terms: tuple[torch.Tensor, int]) -> torch.Tensor:
    """The mean over all view pairs of losses given as ``(mean over its pairs, number of pairs)``."""
    return sum(loss * n for loss, n in terms) / sum(n for _, n in terms)


# -- objectives ----------------------------------------------------------------------------------


class _DistillObjective(DetailCLIPObjective):
    """The stages both distillation objectives share, on top of DetailCLIP's teacher pass and removal.

    Subclasses set ``self.stats`` (detached scalars for the log) in ``forward`` and
    ``self.monitor`` (a :class:`CollapseMonitor`) in ``__init__``.
    """

    stats: dict[str, torch.Tensor]
    monitor: CollapseMonitor
    # Every loss is a per-sample mean (no CLIP loss): gradient accumulation has nothing to cache.
    contrastive_features = None

    def reconstruct(self, images: torch.Tensor, latent: torch.Tensor,
                    removal: Removal) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
        """The decoder's pixel loss, and its features on the full grid.

        Returns:
            ``{"rec": loss}`` (empty without a decoder) and features (VB, 1 + L, Ds), or None
            when there is no decoder or it has no feature output.
        """
        if self.model.decoder is None:
            return {}, None
        pred, features = self.model.decoder(latent, removal.ids_restore)  # (VB, L, P*P*3)
        target = patchify(images, self.model.visual.patch_size)
        return {"rec": reconstruction_loss(pred, target, removal.mask, self.cfg.norm_pix_loss)}, features

    def encode_locals(self, local_views: torch.Tensor) -> torch.Tensor:
        """The student's tokens of whole local crops: (B, N, 3, h, h) -> (N, B, 1 + L', Ds)."""
        b, n = local_views.shape[:2]
        flat = local_views.transpose(0, 1).reshape(n * b, *local_views.shape[2:])  # (B, N, ..) -> (NB, ..)
        visual = self.model.visual
        latent, _ = visual.forward_tokens(visual.embed_patches(flat, interpolate_pos=True))  # (NB, 1 + L', Ds)
        return latent.reshape(n, b, *latent.shape[1:])

    def total(self, losses: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Add ``"loss"``, the weighted sum of the named terms."""
        c = self.cfg
        weights = {"rec": c.w_rec, "cls": c.w_cls, "patch": c.w_patch,
                   "patch_kept": c.w_patch, "patch_removed": c.w_patch}
        losses["loss"] = sum(weights[k] * v for k, v in losses.items())
        return losses

    def extra_metrics(self, step: int) -> dict[str, float]:
        """The collapse statistics of the last batch; warns once if they look like collapse."""
        stats = {k: v.item() for k, v in self.stats.items()}
        self.monitor.check(step=step + 1, spread=stats["spread"], entropy_value=stats.get("teacher_entropy"))
        return stats

    def image_param_counts(self) -> dict[str, int]:
        """Parameters of the student's and the teacher's image encoders (ViT + projection when present)."""
        student = [self.model.visual, self.model.image_proj]
        teacher = [m for name, m in self.teacher.named_children() if name in ("visual", "image_proj")]
        return {"student": sum(p.numel() for m in student for p in m.parameters()),
                "teacher": sum(p.numel() for m in teacher for p in m.parameters())}


class SelfDistillObjective(_DistillObjective):
    """Image-only DetailCLIP: EMA teacher, attention-guided removal, reconstruction, iBOT losses.

    Args:
        model: the student; needs the distillation head.
        cfg: training settings (``w_clip`` is unused: there is no text).
    """

    def __init__(self, model: DetailCLIP, cfg: TrainConfig):
        if model.head is None:
            raise ConfigError("self-distillation needs the distillation head (the model config has head: null)")
        super().__init__(model, cfg)
        # Only the image tower learns: the text tower, image projection and logit scale stay as built.
        for part in (model.text, model.image_proj, model.logit_scale):
            part.requires_grad_(False)
        self.monitor = CollapseMonitor(dim=model.visual.width, classes=model.cfg.head.out_dim)

    def forward(self, view1: torch.Tensor, view2: torch.Tensor, text: torch.Tensor | None = None, *,
                step: int, local_views: torch.Tensor | None = None,
                shard: BatchShard | None = None) -> dict[str, torch.Tensor]:
        """One step's losses.

        Args:
            view1, view2: (B, 3, H, W) two augmented global views of the same images.
            text: ignored (captions are not used).
            step: the global step (schedules, random removal seeds).
            local_views: (B, N, 3, h, h) local crops, or None.
            shard: where the batch sits in the step's global batch (random removal rows).

        Returns:
            ``{"rec", "cls", "patch", "loss"}`` (``rec`` only with a decoder).
        """
        images = torch.cat([view1, view2])  # (VB, 3, H, W)
        teacher_tokens, scores = self.teacher_pass(images)  # (VB, 1 + L, D), (VB, L) or None
        latent, removal = self.encode_student(images, scores, step, shard)  # (VB, 1 + K, D)
        losses, features = self.reconstruct(images, latent, removal)
        teacher_cls = self.teacher_cls_out(teacher_tokens)  # (V, B, C)
        # Statistics and the local term read the centre before the [CLS] loss moves it.
        self.stats = {
            "spread": embedding_spread(latent[:, 0].reshape(NUM_VIEWS, -1, latent.shape[-1])),
            "teacher_entropy": teacher_entropy(teacher_cls, center=self.cls_loss.center,
                                               teacher_temp=self.cfg.teacher_temp_cls),
        }
        local = self.local_cls_loss(teacher_cls, local_views) if local_views is not None else None
        student_tokens = features if features is not None else latent
        losses.update(self.distill_losses(student_tokens, teacher_tokens, removal, step))
        if local is not None:
            n = local_views.shape[1]
            losses["cls"] = pooled_mean((losses["cls"], NUM_VIEWS * (NUM_VIEWS - 1)), (local, NUM_VIEWS * n))
        return self.total(losses)

    @torch.no_grad()
    def teacher_cls_out(self, teacher_tokens: torch.Tensor) -> torch.Tensor:
        """The teacher head's [CLS] logits per view: (VB, 1 + L, D) -> (V, B, C)."""
        out = self.teacher.head(teacher_tokens[:, 0])  # (VB, C)
        return out.reshape(NUM_VIEWS, -1, out.shape[-1])

    def local_cls_loss(self, teacher_cls: torch.Tensor, local_views: torch.Tensor) -> torch.Tensor:
        """DINO's local-to-global [CLS] loss: every local crop against both global teacher views.

        Args:
            teacher_cls: (V, B, C) teacher [CLS] logits of the global views.
            local_views: (B, N, 3, h, h).

        Returns:
            Scalar: the mean over the V * N pairs of H(teacher_v, student_n).
        """
        c = self.cfg
        student_out = self.model.head(self.encode_locals(local_views)[:, :, 0])  # (N, B, C)
        q = self.cls_loss.teacher_probs(teacher_cls, c.teacher_temp_cls)  # (V, B, C)
        log_p = F.log_softmax(student_out.float() / c.student_temp, dim=-1)  # (N, B, C)
        return -torch.einsum("vbc,nbc->vnb", q, log_p).mean()

    def extra_metrics(self, step: int) -> dict[str, float]:
        return {**super().extra_metrics(step), "teacher_temp_patch": self.teacher_temp_patch(step)}


class TeacherTargets(NamedTuple):
    """What a frozen teacher gives the student, on the student's patch grid.

    Attributes:
        embedding: (VB, E) the teacher's normalised image embedding.
        patches: (VB, L, Dt) its patch features.
        scores: (VB, L) its [CLS]-to-patch attention, or None unless removal is attention-guided.
    """

    embedding: torch.Tensor
    patches: torch.Tensor
    scores: torch.Tensor | None


class FrozenTeacherObjective(_DistillObjective):
    """A student learns from a trained, frozen teacher (any model ``resolve_model`` loads).

    The teacher's image tower and projection are kept (never updated, always in eval mode); the
    EMA copy and iBOT centres the parent builds are dropped. The student's text tower and logit
    scale, taken from the teacher (:func:`adopt_text_tower`), are frozen; its distillation head
    is not used (its decoder's feature output is, for the removed positions).

    Args:
        model: the student, with the teacher's text config and embedding width.
        cfg: training settings; ``w_cls``, ``w_patch``, ``w_rec`` weight the terms.
        teacher: the trained model.
    """

    def __init__(self, model: DetailCLIP, cfg: TrainConfig, *, teacher: DetailCLIP):
        if model.cfg.embed_dim != teacher.cfg.embed_dim:
            raise ConfigError(f"the student's embed_dim {model.cfg.embed_dim} differs from the teacher's "
                              f"{teacher.cfg.embed_dim}; build it with student_config_for()")
        super().__init__(model, cfg)
        self.cls_loss = self.patch_loss = None
        self.teacher = nn.ModuleDict({"visual": teacher.visual, "image_proj": teacher.image_proj})
        self.teacher.requires_grad_(False).eval()
        self.teacher_vision = teacher.cfg.vision
        for part in (model.text, model.logit_scale, *([model.head] if model.head is not None else [])):
            part.requires_grad_(False)
        ds, dt = model.visual.width, teacher.visual.width
        # Training-only maps from the student's width to the teacher's (saved in the train state).
        self.bridge_kept = nn.Linear(ds, dt)
        has_features = model.decoder is not None and model.decoder.to_features is not None
        self.bridge_removed = nn.Linear(ds, dt) if has_features else None
        self.monitor = CollapseMonitor(dim=model.cfg.embed_dim)

    @torch.no_grad()
    def update_teacher(self, step: int) -> float:
        """The teacher is frozen: nothing moves (momentum 1)."""
        return 1.0

    @torch.no_grad()
    def teacher_targets(self, images: torch.Tensor) -> TeacherTargets:
        """The teacher's embedding, patch features and removal scores for the student's views.

        Args:
            images: (VB, 3, H, W) the student's views; resized and renormalised for the teacher
                when their image settings differ.
        """
        tokens, scores = self.teacher_pass(convert_images(images, self.model.cfg.vision, self.teacher_vision))
        embedding = F.normalize(self.teacher.image_proj(tokens[:, 0]), dim=-1)  # (VB, E)
        src, dst = self.teacher_vision.grid_size, self.model.visual.grid_size
        patches = resample_grid(tokens[:, 1:], src, dst)  # (VB, Lt, Dt) -> (VB, L, Dt)
        if scores is not None:
            scores = resample_grid(scores.unsqueeze(-1), src, dst).squeeze(-1)  # (VB, Lt) -> (VB, L)
        return TeacherTargets(embedding, patches, scores)

    def forward(self, view1: torch.Tensor, view2: torch.Tensor, text: torch.Tensor | None = None, *,
                step: int, local_views: torch.Tensor | None = None,
                shard: BatchShard | None = None) -> dict[str, torch.Tensor]:
        """One step's losses.

        Args:
            view1, view2: (B, 3, H, W) two augmented views, at the student's image size.
            text: ignored (the teacher's embedding is the target).
            step: the global step (random removal seeds).
            local_views: (B, N, 3, h, h) local crops, or None.
            shard: where the batch sits in the step's global batch (random removal rows).

        Returns:
            ``{"rec", "cls", "patch_kept", "patch_removed", "loss"}`` (``rec`` and
            ``patch_removed`` only with a decoder and some removed tokens).
        """
        images = torch.cat([view1, view2])  # (VB, 3, H, W)
        target = self.teacher_targets(images)
        latent, removal = self.encode_student(images, target.scores, step, shard)  # (VB, 1 + K, Ds)
        losses, features = self.reconstruct(images, latent, removal)

        student_emb = self.model.embed_cls(latent)  # (VB, E), unit norm
        losses["cls"] = cosine_distance(student_emb, target.embedding).mean()  # same view
        teacher_emb = target.embedding.reshape(NUM_VIEWS, -1, target.embedding.shape[-1])  # (V, B, E)
        if local_views is not None:
            local_latent = self.encode_locals(local_views)  # (N, B, 1 + L', Ds)
            local_emb = self.model.embed_cls(local_latent.flatten(0, 1)).reshape(local_latent.shape[0], -1,
                                                                                teacher_emb.shape[-1])  # (N, B, E)
            local = cosine_distance(local_emb.unsqueeze(0), teacher_emb.unsqueeze(1)).mean()  # over (V, N, B)
            losses["cls"] = pooled_mean((losses["cls"], NUM_VIEWS), (local, NUM_VIEWS * local_emb.shape[0]))
        losses.update(self.patch_losses(latent, features, target.patches, removal))
        self.stats = {"spread": embedding_spread(student_emb.reshape(teacher_emb.shape)),
                      "teacher_spread": embedding_spread(teacher_emb)}
        return self.total(losses)

    def patch_losses(self, latent: torch.Tensor, features: torch.Tensor | None, teacher_patches: torch.Tensor,
                     removal: Removal) -> dict[str, torch.Tensor]:
        """Cosine distance to the teacher's patch features at kept and removed positions.

        Args:
            latent: (VB, 1 + K, Ds) encoder tokens of the kept patches.
            features: (VB, 1 + L, Ds) decoder features (removed positions predicted from
                context), or None.
            teacher_patches: (VB, L, Dt) teacher features on the student's grid.
            removal: the removal that produced ``latent``.
        """
        ids = removal.ids_keep.unsqueeze(-1).expand(-1, -1, teacher_patches.shape[-1])
        kept_target = torch.gather(teacher_patches, 1, ids)  # (VB, L, Dt) -> (VB, K, Dt)
        out = {"patch_kept": cosine_distance(self.bridge_kept(latent[:, 1:]), kept_target).mean()}
        if features is not None and self.bridge_removed is not None and removal.mask.any():
            dist = cosine_distance(self.bridge_removed(features[:, 1:]), teacher_patches)  # (VB, L)
            mask = removal.mask.float()
            out["patch_removed"] = (dist * mask).sum() / mask.sum()
        return out


# -- setting a run up ----------------------------------------------------------------------------


def student_config_for(student: ModelConfig, teacher: ModelConfig) -> ModelConfig:
    """The student's config with the teacher's text tower and embedding width (it inherits them)."""
    return dataclasses.replace(student, text=dataclasses.replace(teacher.text), embed_dim=teacher.embed_dim,
                               max_logit_scale=teacher.max_logit_scale)


@torch.no_grad()
def adopt_text_tower(student: DetailCLIP, teacher: DetailCLIP) -> None:
    """Copy the teacher's text tower (with its projection) and logit scale into the student."""
    student.text.load_state_dict(teacher.text.state_dict())
    student.logit_scale.copy_(teacher.logit_scale)


def load_teacher(spec: str, *, pretrained: str | None = None, out_dir: Path | None = None,
                 resume: bool = False) -> DetailCLIP:
    """The frozen teacher: resolved from ``spec``, or, when resuming, rebuilt from the run's record.

    A resumed run restores the teacher's weights from its training state, so it needs neither
    the original model nor a download; only the architecture comes from ``run.json``.
    """
    if not resume:
        from detailclip_cli.core.inference import resolve_model

        return resolve_model(spec, pretrained=pretrained)
    import json

    recorded = json.loads((Path(out_dir) / RUN_FILE).read_text()).get("teacher_model")
    if recorded is None:
        raise ConfigError(f"cannot resume: {Path(out_dir) / RUN_FILE} does not record the teacher's config")
    return DetailCLIP(ModelConfig.from_dict(recorded)).eval()


def distill(student_cfg: ModelConfig, cfg: TrainConfig, *, data: str | Path = "demo", out_dir: Path,
            device: str = "auto", teacher: str | None = None, pretrained: str | None = None,
            local_crops: int = 0, local_size: int | None = None, resume: bool = False,
            settings: dict[str, Any] | None = None) -> TrainingRun:
    """Distil a student image tower: set the run up now, and return an iterator of its steps.

    Without ``teacher``: self-distillation (:class:`SelfDistillObjective`). With one: the
    student learns from it, frozen (:class:`FrozenTeacherObjective`), and inherits its text
    tower. The run folder has ``pretrain``'s layout; the student is ``model.safetensors``.

    Args:
        student_cfg: the student's model (with a teacher, its text and embedding settings are
            replaced by the teacher's).
        cfg: training settings.
        data: ``"demo"``, a folder of images (captions optional), or a CSV/TSV file.
        out_dir: the run folder (created).
        device: ``auto``, ``cpu`` or ``cuda``.
        teacher: a model spec for ``resolve_model`` (run or model folder, ``open_clip:NAME``).
        pretrained: with ``open_clip:NAME``, its pretrained tag or weights file.
        local_crops: N local crops per image (DINO multi-crop); 0 for none.
        local_size: their side in pixels (default: 3/7 of the global side, whole patches).
        resume: continue the run in ``out_dir`` (the teacher is restored from its state).
        settings: extra settings to record in ``run.json``.

    Raises:
        ConfigError, DataError, ModelLoadError: at the call, for unusable settings, data or teacher.
        TrainingError: while iterating, a loss became non-finite.
    """
    student_cfg.validate()
    cfg.validate(student_cfg)
    v = student_cfg.vision
    local_size = local_size or local_crop_size(v.image_size, v.patch_size)
    if local_crops < 0:
        raise ConfigError(f"local_crops must be at least 0, got {local_crops}")
    if local_crops and (local_size % v.patch_size or local_size < v.patch_size):
        raise ConfigError(f"local crop size {local_size} is not a positive multiple of the patch size {v.patch_size}")
    dev = join_process_group(resolve_device(device))
    shards = streams_shards(data, samples_per_epoch=cfg.samples_per_epoch)
    samples = None if shards else image_samples(data, split="train")
    if samples is not None:
        check_batch_fits(len(samples), cfg)

    teacher_model = None
    if teacher is not None:
        teacher_model = load_teacher(teacher, pretrained=pretrained, out_dir=out_dir, resume=resume)
        student_cfg = student_config_for(student_cfg, teacher_model.cfg)
    seed_everything(cfg.seed)
    model = DetailCLIP(student_cfg)
    if teacher_model is not None:
        adopt_text_tower(model, teacher_model)
        objective = FrozenTeacherObjective(model, cfg, teacher=teacher_model)
    else:
        objective = SelfDistillObjective(model, cfg)
    objective.to(dev)

    dataset = MultiCropDataset(samples, image_size=v.image_size, mean=v.mean, std=v.std,
                               aug=train_augment(v.image_size, data), tokenize=None, seed=cfg.seed,
                               local_crops=local_crops, local_size=local_size)
    if shards:  # the views above make the items of the images the shards stream
        dataset = ShardDataset(data, views=dataset, seed=cfg.seed, samples_per_epoch=cfg.samples_per_epoch)
        check_batch_fits(len(dataset), cfg)
    record = {"command": "distill", **(settings or {}), "teacher": teacher, "pretrained": pretrained,
              "local_crops": local_crops, "local_size": local_size}
    if teacher_model is not None:
        record["teacher_model"] = teacher_model.cfg.to_dict()
    return fit(objective, dataset, cfg=cfg, data=data, out_dir=out_dir, device=dev, resume=resume,
               settings=record)
