"""The pretraining recipe: build DetailCLIP, its objective and two-view data, and hand them to the loop."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from detailclip_cli.core.config import ModelConfig, TrainConfig
from detailclip_cli.core.data import TwoViewDataset
from detailclip_cli.core.method.objective import DetailCLIPObjective
from detailclip_cli.core.model.detailclip import DetailCLIP
from detailclip_cli.core.store.init_weights import copy_clip_weights_, lock_text_
from detailclip_cli.core.store.lock import FileLock, released_on_error
from detailclip_cli.core.store.run import RunFolder
from detailclip_cli.core.training.loggers import LogTo
from detailclip_cli.core.training.loop import TrainingRun, fit
from detailclip_cli.core.training.trainset import prepare


def train(model_cfg: ModelConfig, cfg: TrainConfig, *, data: str | Path = "demo", out_dir: Path,
          device: str = "auto", resume: bool = False, settings: dict[str, Any] | None = None,
          init: DetailCLIP | None = None, lock_text: bool = False, force: bool = False,
          shard: bool = False, log_to: LogTo | None = None) -> TrainingRun:
    """Pretrain DetailCLIP: set the run up now, and return an iterator of its steps.

    The returned iterator yields a :class:`StepInfo` every ``cfg.log_every`` steps. Bad data,
    configs or resume folders raise here, before any step runs.

    Args:
        model_cfg: the model to build.
        cfg: the training settings.
        data: a data spec for :func:`read_samples` (``"demo"``, a folder, a CSV/TSV file).
        out_dir: the run folder (created).
        device: ``auto``, ``cpu`` or ``cuda``.
        resume: continue the run in ``out_dir`` from its last checkpoint.
        settings: extra settings to record in ``run.json``.
        init: a model whose towers, image projection and logit scale the student (and so the
            teacher) starts from; ``model_cfg`` must have its towers (``init_model_config``).
        lock_text: freeze the text tower (kept out of the optimiser, so it never changes).
        force: start in an ``out_dir`` that holds files, moving them aside (``RunFolder.create``).
        shard: under torchrun, FSDP2 instead of DDP (:mod:`~detailclip_cli.core.training.parallel`).
        log_to: loggers besides ``metrics.jsonl`` (:class:`~detailclip_cli.core.training.loggers.LogTo`).

    Raises:
        ConfigError, DataError: at the call, for unusable settings or data.
        LockedError: at the call, another process is writing ``out_dir``.
        UsageError: at the call, ``out_dir`` holds files and neither ``resume`` nor ``force`` is given.
        TrainingError: while iterating, a loss became non-finite (the last good checkpoint is kept).
    """
    # The folder first, before any work: a second writer stops here, having written nothing.
    lock = RunFolder(out_dir).claim(resume=resume, force=force)
    with released_on_error(lock):
        return _train(model_cfg, cfg, data=data, out_dir=out_dir, device=device, resume=resume,
                      settings=settings, init=init, lock_text=lock_text, lock=lock,
                      shard=shard, log_to=log_to)


def _train(model_cfg: ModelConfig, cfg: TrainConfig, *, data: str | Path, out_dir: Path, device: str,
           resume: bool, settings: dict[str, Any] | None, init: DetailCLIP | None, lock_text: bool,
           lock: FileLock, shard: bool, log_to: LogTo | None) -> TrainingRun:
    """:func:`train` once its run folder is claimed."""
    dev, train_data, cfg = prepare(model_cfg, cfg, device=device, data=data)
    model = DetailCLIP(model_cfg)
    if init is not None:
        copy_clip_weights_(model, init)  # before the objective copies the image tower into the teacher
    if lock_text:
        lock_text_(model)  # before the optimiser is built, which leaves frozen parameters out
    objective = DetailCLIPObjective(model, cfg).to(dev)
    dataset = train_data.dataset(TwoViewDataset, vision=model_cfg.vision, tokenize=model.tokenize)

    def metrics(step: int) -> dict[str, float]:
        return {"logit_scale": model.scale().item(), "teacher_temp_patch": objective.teacher_temp_patch(step)}

    return fit(objective, dataset, cfg=cfg, data=data, out_dir=out_dir, device=dev, resume=resume,
               settings=settings, metrics=metrics, lock=lock, shard=shard, log_to=log_to)
