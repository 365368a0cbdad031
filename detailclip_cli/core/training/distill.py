"""The distillation recipe: a student image tower trained from a teacher (or itself), from images alone."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

from detailclip_cli.core.choices import DistillMethod, Removal, one_of
from detailclip_cli.core.config import ConfigError, ModelConfig, TrainConfig
from detailclip_cli.core.data.multicrop import MultiCropDataset, local_crop_size
from detailclip_cli.core.method.distill import (
    FrozenTeacherObjective,
    SelfDistillObjective,
)
from detailclip_cli.core.method.selfsup import ByolObjective, DinoObjective, SimCLRObjective
from detailclip_cli.core.model.detailclip import DetailCLIP
from detailclip_cli.core.store.lock import FileLock, released_on_error
from detailclip_cli.core.store.lookup import resolve_model
from detailclip_cli.core.store.run import RunFolder
from detailclip_cli.core.training.loggers import LogTo
from detailclip_cli.core.training.loop import TrainingRun, fit
from detailclip_cli.core.training.trainset import prepare


# The objective of each method, for a run without a teacher.
OBJECTIVES = {DistillMethod.ibot: SelfDistillObjective, DistillMethod.dino: DinoObjective,
              DistillMethod.byol: ByolObjective, DistillMethod.simclr: SimCLRObjective}
# Local crops per image when the run does not say: DINO is multi-crop (6 is its paper's
# "2 x 224 + 6 x 96" setting); the others take none unless asked.
DEFAULT_LOCAL_CROPS = {DistillMethod.dino: 6}
# The methods with a [CLS] target that local crops can be matched to.
MULTI_CROP_METHODS = (DistillMethod.ibot, DistillMethod.dino)


def default_local_crops(method: str | None) -> int:
    """Local crops per image of a run of ``method`` that does not say (None: ibot)."""
    return DEFAULT_LOCAL_CROPS.get(check_method(method or DistillMethod.ibot), 0)


def check_method(method: str) -> DistillMethod:
    """``method`` as a :class:`DistillMethod`; a :class:`ConfigError` naming the choices otherwise."""
    if method not in tuple(DistillMethod):
        raise ConfigError(f"method must be {one_of(DistillMethod)}, not {method!r}")
    return DistillMethod(method)


def method_configs(method: str, model_cfg: ModelConfig, train_cfg: TrainConfig, *, removal_chosen: bool = False,
                   reconstruct: bool = False) -> tuple[ModelConfig, TrainConfig]:
    """The configs a new run of ``method`` starts from (copies; the arguments are not changed).

    ``ibot`` takes them as they are. ``dino``, ``byol`` and ``simclr`` are the image-level
    objectives the method builds on: they run without token removal unless ``removal_chosen``
    (the run named a strategy) and without the pixel decoder unless ``reconstruct``; ``byol``
    and ``simclr`` also leave out the distillation head, which they do not use, so the saved
    model holds no untrained part.
    """
    method = check_method(method)
    model_cfg, train_cfg = ModelConfig.from_dict(model_cfg.to_dict()), TrainConfig.from_dict(train_cfg.to_dict())
    if method is DistillMethod.ibot:
        return model_cfg, train_cfg
    if not reconstruct:
        model_cfg.decoder = None
    if method not in MULTI_CROP_METHODS:
        model_cfg.head = None
    if not removal_chosen:
        train_cfg.removal = Removal.none.value
    return model_cfg, train_cfg


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
                 resume: bool = False, verify: bool = True) -> DetailCLIP:
    """The frozen teacher: resolved from ``spec``, or, when resuming, rebuilt from the run's record.

    A resumed run restores the teacher's weights from its training state, so it needs neither
    the original model nor a download; only the architecture comes from ``run.json``. ``verify``
    checks a model folder's weights against the SHA-256 its ``config.json`` records.
    """
    if not resume:
        return resolve_model(spec, pretrained=pretrained, verify=verify)
    run = RunFolder(out_dir)
    recorded = run.recorded().get("teacher_model")
    if recorded is None:
        raise ConfigError(f"cannot resume: {run.settings_file} does not record the teacher's config")
    return DetailCLIP(ModelConfig.from_dict(recorded)).eval()


def distill(student_cfg: ModelConfig, cfg: TrainConfig, *, data: str | Path = "demo", out_dir: Path,
            device: str = "auto", teacher: str | None = None, pretrained: str | None = None,
            method: str | None = None, local_crops: int | None = None, local_size: int | None = None,
            resume: bool = False, settings: dict[str, Any] | None = None, force: bool = False,
            shard: bool = False, log_to: LogTo | None = None, verify: bool = True) -> TrainingRun:
    """Distil a student image tower: set the run up now, and return an iterator of its steps.

    Without ``teacher``: the image-only objective ``method`` (:data:`OBJECTIVES`; ``ibot``,
    self-distillation, by default; :func:`method_configs` gives the configs the others start
    from). With one: the student learns from it, frozen (:class:`FrozenTeacherObjective`), and
    inherits its text tower. The run folder has ``pretrain``'s layout; the student is
    ``model.safetensors``; ``run.json`` records the method (None with a teacher).

    Args:
        student_cfg: the student's model (with a teacher, its text and embedding settings are
            replaced by the teacher's).
        cfg: training settings.
        data: ``"demo"``, a folder of images (captions optional), or a CSV/TSV file.
        out_dir: the run folder (created).
        device: ``auto``, ``cpu`` or ``cuda``.
        teacher: a model spec for ``resolve_model`` (run or model folder, ``open_clip:NAME``).
        pretrained: with ``open_clip:NAME``, its pretrained tag or weights file.
        method: a :class:`DistillMethod` without a teacher (default ``ibot``); must be None with one.
        local_crops: N local crops per image (DINO multi-crop); 0 for none; None for the
            method's default (:data:`DEFAULT_LOCAL_CROPS`, else 0). ``byol`` and ``simclr`` take none.
        local_size: their side in pixels (default: 3/7 of the global side, whole patches).
        resume: continue the run in ``out_dir`` (the teacher is restored from its state).
        settings: extra settings to record in ``run.json``.
        force: start in an ``out_dir`` that holds files, moving them aside (``RunFolder.create``).
        shard: under torchrun, FSDP2 instead of DDP (:mod:`~detailclip_cli.core.training.parallel`).
        log_to: loggers besides ``metrics.jsonl`` (:class:`~detailclip_cli.core.training.loggers.LogTo`).
        verify: check the teacher's weights against the SHA-256 its ``config.json`` records.

    Raises:
        ConfigError, DataError, ModelLoadError: at the call, for unusable settings, data or teacher.
        LockedError: at the call, another process is writing ``out_dir``.
        UsageError: at the call, ``out_dir`` holds files and neither ``resume`` nor ``force`` is given.
        TrainingError: while iterating, a loss became non-finite.
    """
    # The folder first, before any work: a second writer stops here, having written nothing.
    lock = RunFolder(out_dir).claim(resume=resume, force=force)
    with released_on_error(lock):
        return _distill(student_cfg, cfg, data=data, out_dir=out_dir, device=device, teacher=teacher,
                        pretrained=pretrained, method=method, local_crops=local_crops, local_size=local_size,
                        resume=resume, settings=settings, lock=lock, shard=shard, log_to=log_to, verify=verify)


def _distill(student_cfg: ModelConfig, cfg: TrainConfig, *, data: str | Path, out_dir: Path, device: str,
             teacher: str | None, pretrained: str | None, method: str | None, local_crops: int | None,
             local_size: int | None, resume: bool, settings: dict[str, Any] | None, lock: FileLock,
             shard: bool, log_to: LogTo | None, verify: bool = True) -> TrainingRun:
    """:func:`distill` once its run folder is claimed."""
    v = student_cfg.vision
    if teacher is not None and method is not None:
        raise ConfigError("--method chooses the objective of a run without a teacher; with --teacher the "
                          "student learns from the teacher (leave --method out)")
    chosen = None if teacher is not None else check_method(method or DistillMethod.ibot)
    if local_crops is None:
        local_crops = 0 if chosen is None else default_local_crops(chosen)

    def check_local_crops() -> None:  # run after the configs' own checks, which vouch for the patch size
        nonlocal local_size
        local_size = local_size or local_crop_size(v.image_size, v.patch_size)
        if local_crops < 0:
            raise ConfigError(f"local_crops must be at least 0, got {local_crops}")
        if local_crops and chosen is not None and chosen not in MULTI_CROP_METHODS:
            raise ConfigError(f"{chosen} takes no local crops (they are for {one_of(MULTI_CROP_METHODS)})")
        if local_crops and (local_size % v.patch_size or local_size < v.patch_size):
            raise ConfigError(f"local crop size {local_size} is not a positive multiple of the patch size "
                              f"{v.patch_size}")

    dev, train_data, cfg = prepare(student_cfg, cfg, device=device, data=data, captions=False,
                                   check=check_local_crops)
    teacher_model = None
    if teacher is not None:
        # Under its own RNG: the student's initialisation depends on the seed alone, teacher or not.
        with torch.random.fork_rng(devices=[]):
            teacher_model = load_teacher(teacher, pretrained=pretrained, out_dir=out_dir, resume=resume,
                                         verify=verify)
        student_cfg = student_config_for(student_cfg, teacher_model.cfg)
    model = DetailCLIP(student_cfg)
    if teacher_model is not None:
        adopt_text_tower(model, teacher_model)
        objective = FrozenTeacherObjective(model, cfg, teacher=teacher_model)
    else:
        objective = OBJECTIVES[chosen](model, cfg)
    objective.to(dev)
    dataset = train_data.dataset(MultiCropDataset, vision=v, tokenize=None, local_crops=local_crops,
                                 local_size=local_size)
    record = {"command": "distill", **(settings or {}), "teacher": teacher, "pretrained": pretrained,
              "method": None if chosen is None else chosen.value, "local_crops": local_crops,
              "local_size": local_size}
    if teacher_model is not None:
        record["teacher_model"] = teacher_model.cfg.to_dict()
    return fit(objective, dataset, cfg=cfg, data=data, out_dir=out_dir, device=dev, resume=resume,
               settings=record, lock=lock, shard=shard, log_to=log_to)
