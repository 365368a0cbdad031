"""The training loop: a generator that yields one :class:`StepInfo` per logged step.

The loop owns the optimiser, the learning-rate schedule, the data order, and when to
checkpoint and log (the run folder, :class:`~detailclip_cli.core.store.run.RunFolder`, owns how);
it knows nothing about how progress is drawn (the CLI iterates over it), nor about what is
trained: :func:`fit` runs any :class:`Objective` on any dataset a recipe built (``pretrain``
passes the DetailCLIP objective, ``distill`` its distillation objectives)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import torch
from torch.utils.data import DataLoader

from detailclip_cli import __version__
from detailclip_cli.core.config import ConfigError, TrainConfig
from detailclip_cli.core.data import ReportingDataset, StreamingDataset, collate_skipping_bad
from detailclip_cli.core.device import autocast_dtype
from detailclip_cli.core.distributed import (
    BatchShard,
    all_gather_rows,
    any_across,
    barrier,
    broadcast_state,
    is_main_process,
    mean_across,
    rank,
    world_size,
)
from detailclip_cli.core.method.losses import deferred_center_updates
from detailclip_cli.core.model.vit import Block
from detailclip_cli.core.store.lock import FileLock
from detailclip_cli.core.store.run import RunFolder
from detailclip_cli.core.training.loggers import Logger, LogTo
from detailclip_cli.core.training.optim import build_optimizer, lr_at
from detailclip_cli.core.training.parallel import Parallel, parallelize
from detailclip_cli.errors import Interrupted, TrainingError


class Objective(Protocol):
    """What the loop trains: an ``nn.Module`` holding the student as ``model``.

    ``objective(view1, view2, text, step=step, shard=shard, **views)`` returns a dict of named
    scalar losses with ``"loss"`` their weighted total; ``text`` is None when the data has no
    captions, ``views`` are the batch's other tensors (e.g. ``local_views``), and ``shard`` (a
    :class:`BatchShard`, or None for a whole step in one batch) places the batch in its step's
    global batch. An objective whose loss compares samples across the batch (CLIP's negatives)
    has a method ``contrastive_features(view1, view2, text, step=, shard=) -> {name: (B, E)}``
    (None otherwise), the no-grad features that gradient accumulation caches, and asks
    ``shard.global_features`` for the global rows; its other losses are per-sample means.
    ``update_teacher(step)`` moves the teacher after the optimiser step and returns its momentum. Everything of the
    objective but ``model`` (teacher, centres, bridges) is saved in the training state.
    Optionally, ``extra_metrics(step) -> dict[str, float]`` adds figures to each logged step.
    """

    model: torch.nn.Module

    def __call__(self, view1: torch.Tensor, view2: torch.Tensor, text: torch.Tensor | None, *,
                 step: int, shard: BatchShard | None = None, **views: torch.Tensor) -> dict[str, torch.Tensor]: ...

    def update_teacher(self, step: int) -> float: ...


@dataclass
class StepInfo:
    """What the loop reports after a logged step."""

    step: int  # steps completed
    total_steps: int
    losses: dict[str, float]
    lr: float
    momentum: float
    images_per_sec: float
    elapsed_s: float
    saved: bool = False
    extra: dict[str, float] = field(default_factory=dict)


def epoch_order(num_samples: int, epoch: int, seed: int) -> list[int]:
    """The sample order of an epoch: a permutation seeded by (seed, epoch) alone."""
    g = torch.Generator().manual_seed(seed * 7919 + epoch)
    return torch.randperm(num_samples, generator=g).tolist()


def iterate_batches(dataset, cfg: TrainConfig, start_step: int, *, rank: int = 0, world_size: int = 1,
                    pin_memory: bool = False) -> Iterator[dict]:
    """Endless batches from ``start_step`` on, identical to an uninterrupted run's.

    Each step's global batch is the next ``cfg.batch_size`` samples of the epoch's order;
    process ``rank`` of ``world_size`` gets its contiguous slice of it, so the data of a step
    is the same whatever the number of processes.

    Args:
        dataset: a ``TwoViewDataset`` or subclass (with ``set_epoch``).
        cfg: batch size (global), workers, seed.
        start_step: the first step to produce a batch for (resume point).
        rank: this process's slice, samples ``[rank * G / W, (rank + 1) * G / W)`` of a step.
        world_size: W, the number of processes (dividing G = ``cfg.batch_size``).
    """
    if isinstance(dataset, StreamingDataset):  # a stream (tar shards) batches itself
        yield from dataset.batches(cfg, start_step, rank=rank, world_size=world_size, pin_memory=pin_memory)
        return
    size = cfg.batch_size
    per_epoch = len(dataset) // size
    check_batch_fits(len(dataset), cfg)
    local = size // world_size
    step = start_step
    while True:
        epoch, offset = divmod(step, per_epoch)
        dataset.set_epoch(epoch)
        order = epoch_order(len(dataset), epoch, cfg.seed)
        mine = [i for b in range(offset, per_epoch) for i in order[b * size + rank * local: b * size + (rank + 1) * local]]
        loader = DataLoader(dataset, batch_size=local, sampler=mine, drop_last=True,
                            num_workers=cfg.workers, pin_memory=pin_memory, collate_fn=collate_skipping_bad)
        for batch in loader:
            yield batch
            step += 1


def check_batch_fits(num_samples: int, cfg: TrainConfig) -> None:
    """Refuse data with fewer samples than one batch (before anything is built)."""
    if num_samples < cfg.batch_size:
        raise ConfigError(f"the data has {num_samples} samples, fewer than one batch of {cfg.batch_size}")


class TrainingRun:
    """A set-up run: iterate it for its :class:`StepInfo` records; ``objective`` is what it trains.

    It holds the run folder's lock (:meth:`RunFolder.claim`) until its steps end, fail, or it
    is closed or dropped; the process's end releases it in any case.
    """

    def __init__(self, steps: Iterator[StepInfo], objective: Objective, start_step: int, stop: dict,
                 data_report=None, *, lock: FileLock | None = None, moved_aside: Path | None = None):
        self._steps = steps
        self.objective = objective
        self.start_step = start_step
        self._stop = stop
        # What reading the data skipped or repaired (a ReadReport), or None when not known.
        self.data_report = data_report
        self._lock = lock
        # Where an earlier run's files in the folder went (``force``), or None.
        self.moved_aside = moved_aside

    def close(self) -> None:
        """Stop writing: release the run folder's lock (the steps cannot go on after this)."""
        if self._lock is not None:
            self._lock.release()
            self._lock = None
        close = getattr(self._steps, "close", None)
        if close is not None:
            close()

    def request_stop(self) -> None:
        """Finish the current step, save a checkpoint, then raise :class:`Interrupted`.

        Safe to call from a signal handler: it only sets a flag the loop reads between steps.
        """
        self._stop["requested"] = True

    def __iter__(self) -> TrainingRun:
        return self

    def __next__(self) -> StepInfo:
        try:
            return next(self._steps)
        except BaseException:  # the end, a failure, an interrupt: the folder is free again
            self.close()
            raise

    def __del__(self) -> None:
        if getattr(self, "_lock", None) is not None:
            self._lock.release()


def fit(objective: Objective, dataset, *, cfg: TrainConfig, data: str | Path, out_dir: Path,
        device: torch.device, resume: bool = False, settings: dict[str, Any] | None = None,
        metrics: Callable[[int], dict[str, float]] | None = None, force: bool = False,
        lock: FileLock | None = None, shard: bool = False, log_to: LogTo | None = None) -> TrainingRun:
    """Set up the optimiser and the run folder (or resume it) for any objective, and return its steps.

    Args:
        objective: an :class:`Objective`, already on ``device``.
        dataset: a ``TwoViewDataset`` (or subclass) whose items the objective takes.
        cfg: the training settings.
        data: the data spec, recorded in ``run.json``.
        out_dir: the run folder (created).
        device: where the objective lives.
        resume: continue the run in ``out_dir`` from its last checkpoint.
        settings: extra settings to record in ``run.json``.
        metrics: figures to add to each logged step, ``metrics(step) -> {name: value}``;
            defaults to the objective's ``extra_metrics`` when it has one.
        force: a new run may start in a folder holding files; they are moved aside
            (:meth:`RunFolder.create`).
        lock: the folder's lock, when the caller claimed it already (:meth:`RunFolder.claim`);
            else it is claimed here. The returned run holds it.
        shard: under torchrun, shard parameters, gradients and optimiser state over the
            processes (FSDP2) instead of replicating them (DDP); see :mod:`.parallel`.
        log_to: where rank 0 also sends each ``metrics.jsonl`` row, and pictures (see
            :mod:`.loggers`); the loggers open with the run and close when its steps end.

    Raises:
        LockedError: another process is writing the folder.
        UsageError: a new run's folder holds files and ``force`` is off.
    """
    run = RunFolder(out_dir)
    lock = lock if lock is not None else run.claim(resume=resume, force=force)
    try:
        return _fit(objective, dataset, run, lock, cfg=cfg, data=data, device=device, resume=resume,
                    settings=settings, metrics=metrics, shard=shard, log_to=log_to or LogTo())
    except BaseException:
        lock.release()
        raise


def _fit(objective: Objective, dataset, run: RunFolder, lock: FileLock, *, cfg: TrainConfig, data: str | Path,
         device: torch.device, resume: bool, settings: dict[str, Any] | None,
         metrics: Callable[[int], dict[str, float]] | None, shard: bool, log_to: LogTo) -> TrainingRun:
    """:func:`fit` once the folder is claimed."""
    world, main = world_size(), is_main_process()
    if cfg.batch_size % (world * cfg.accum_steps):
        raise ConfigError(f"the batch size {cfg.batch_size} (global, of all processes) does not split evenly "
                          f"into {world} processes x {cfg.accum_steps} micro-batches")
    broadcast_state(objective)  # seeded alike already; this makes sure every process starts from rank 0's
    parallel = parallelize(objective, shard=shard, device=device)
    optimizer = build_optimizer(objective, cfg)  # after sharding, which replaces the parameters
    # The fp16 loss scaler (the identity otherwise) is part of the checkpoint, so a resumed fp16
    # run goes on with the scale it had reached, as an uninterrupted one would.
    scaler = torch.amp.GradScaler(device.type, enabled=autocast_dtype(cfg.precision, device) is torch.float16)
    report = dataset.data_report() if isinstance(dataset, ReportingDataset) else None
    start, aside = 0, None
    if resume:
        # Every process reads the checkpoint (the run folder must be visible to all); only rank 0 writes.
        if main:
            run.recover()
        barrier()
        start = parallel.load(run, optimizer, scaler)
        if main:
            run.truncate_metrics(start)
    elif main:
        aside = run.create({
            "data": str(data), "device": str(device), "processes": world, "detailclip_version": __version__,
            **({"sharded": True} if parallel.mode == "sharded" else {}),
            "torch_version": torch.__version__, **(settings or {}),
            "model": objective.model.cfg.to_dict(), "train": cfg.to_dict(),
            **({"data_report": {**report.counts(), "examples": report.examples}} if report else {}),
        })
    if cfg.compile:
        compile_blocks(objective)
    batches = iterate_batches(dataset, cfg, start, rank=rank(), world_size=world, pin_memory=device.type == "cuda")
    metrics = metrics or getattr(objective, "extra_metrics", None)
    # Setup errors (data, config, resume) surface here, at the call; the steps run on iteration.
    stop = {"requested": False}
    loggers = log_to.open(run.path, run.recorded()) if main and log_to.names else []
    steps = _loop(parallel, optimizer, batches, cfg=cfg, start=start, device=device, run=run,
                  metrics=metrics, stop=stop, scaler=scaler, loggers=loggers)
    return TrainingRun(steps, objective, start, stop, data_report=report, lock=lock, moved_aside=aside)


def compile_blocks(module: torch.nn.Module) -> int:
    """``torch.compile`` each transformer block under ``module`` in place; returns how many.

    Blocks, not the whole objective: their shapes are fixed within a run (the kept-token count
    is), so each compiles once, and ``Module.compile`` keeps parameter names, so checkpoints
    are the same with and without it.
    """
    blocks = [m for m in module.modules() if isinstance(m, Block)]
    for block in blocks:
        block.compile()
    return len(blocks)


# Batch keys the loop passes by position; the others (but ``index``) go to the objective by name.
_POSITIONAL_KEYS = ("view1", "view2", "text", "index")


class _Tally(NamedTuple):
    """A step's sample counts summed over the processes, and whether any process was asked to stop."""

    min_good: int  # the fewest readable samples a process has
    good: int
    bad: int
    stop: bool


def _tally(good: int, bad: int, stop: bool, device: torch.device) -> _Tally:
    """:class:`_Tally` of this process's counts; one small all-gather under torchrun, so every
    process takes the same decisions (skip the step, stop for bad data, stop when asked)."""
    if world_size() == 1:
        return _Tally(good, good, bad, stop)
    rows = all_gather_rows(torch.tensor([good, bad, int(stop)], device=device)).tolist()  # (W, 3)
    return _Tally(min(r[0] for r in rows), sum(r[0] for r in rows), sum(r[1] for r in rows),
                  any(r[2] for r in rows))


def _micro_batches(batch: dict, accum: int, size: int, device: torch.device) -> list[dict]:
    """The first ``accum * size`` rows of a batch as ``accum`` micro-batches of ``size`` rows, on ``device``."""
    tensors = {k: v.to(device, non_blocking=True) for k, v in batch.items() if k != "index"}
    return [{k: v[j * size:(j + 1) * size] for k, v in tensors.items()} for j in range(accum)]


def _fill_bank(objective: Objective, micro_batches: list[dict], shards: list[BatchShard], step: int,
               autocast: Callable) -> None:
    """Give every shard the step's contrastive features of all rows (no gradient), (W, K, b, E) per name."""
    with torch.no_grad(), autocast():
        features = [objective.contrastive_features(mb["view1"], mb["view2"], mb.get("text"), step=step, shard=s)
                    for mb, s in zip(micro_batches, shards)]
    bank = {k: all_gather_rows(torch.stack([f[k] for f in features])) for k in features[0]}  # K x (b, E) -> (W, K, b, E)
    for shard in shards:
        shard.bank = bank


def _save_from_main(run: RunFolder, parallel: Parallel, optimizer: torch.optim.Optimizer, step: int,
                    device: torch.device, scaler: torch.amp.GradScaler | None = None) -> None:
    """:meth:`Parallel.save` (rank 0 writes); when it fails, every process stops (they all learn it)."""
    error = None
    try:
        parallel.save(run, optimizer, step, scaler)
    except TrainingError as exc:
        error = exc
    if any_across(error is not None, device):
        raise error or TrainingError(f"rank 0 could not save the checkpoint of step {step}")


def _loop(parallel: Parallel, optimizer: torch.optim.Optimizer, batches: Iterator[dict], *,
          cfg: TrainConfig, start: int, device: torch.device, run: RunFolder,
          metrics: Callable[[int], dict[str, float]] | None = None,
          stop: dict | None = None, scaler: torch.amp.GradScaler | None = None,
          loggers: list[Logger] | None = None) -> Iterator[StepInfo]:
    """The steps themselves: forward and backward of each micro-batch (gradients reduced over the
    processes by DDP or FSDP2 during the last one's backward), finiteness check, optimiser, EMA,
    checkpoint, log (the last two on rank 0).

    ``stop["requested"]``, checked between steps, saves the last whole step and raises
    :class:`Interrupted` (a step is never cut in half, so the checkpoint is always consistent).
    """
    stop = stop if stop is not None else {"requested": False}
    objective, loggers = parallel.objective, loggers or []
    try:
        yield from _steps(parallel, objective, optimizer, batches, cfg=cfg, start=start, device=device, run=run,
                          metrics=metrics, stop=stop, scaler=scaler, loggers=loggers)
    finally:
        for logger in loggers:
            logger.close()


def _steps(parallel: Parallel, objective: Objective, optimizer: torch.optim.Optimizer, batches: Iterator[dict], *,
           cfg: TrainConfig, start: int, device: torch.device, run: RunFolder,
           metrics: Callable[[int], dict[str, float]] | None, stop: dict,
           scaler: torch.amp.GradScaler | None, loggers: list[Logger]) -> Iterator[StepInfo]:
    """:func:`_loop`'s steps (it closes the loggers whatever happens)."""
    dev = device
    params = [p for group in optimizer.param_groups for p in group["params"]]
    amp_dtype = autocast_dtype(cfg.precision, dev)
    if scaler is None:
        scaler = torch.amp.GradScaler(dev.type, enabled=amp_dtype is torch.float16)

    def autocast():
        return torch.autocast(dev.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None)

    world, accum, main = world_size(), cfg.accum_steps, is_main_process()
    banked = accum > 1 and getattr(objective, "contrastive_features", None) is not None
    objective.train()
    t_start = time.perf_counter()
    t_log, n_since_log = t_start, 0
    seen, bad_count = 0, 0  # samples drawn / unreadable ones skipped, over all processes
    skipped = 0  # steps left with fewer than two readable images
    for step in range(start, cfg.steps):
        batch = next(batches)
        unreadable = batch.pop("bad")
        tally = _tally(len(batch["view1"]) if "view1" in batch else 0, len(unreadable), stop["requested"], dev)
        if tally.stop:
            if step > start:
                _save_from_main(run, parallel, optimizer, step, dev, scaler)
            raise Interrupted(f"stopped at step {step}; the checkpoint is saved, continue with "
                              f"`detailclip pretrain --resume {run.path}` (or `distill --resume`)")
        bad_count += tally.bad
        seen += tally.bad + tally.good
        # Judged against at least four batches, so a few broken files that happen to come
        # first do not stop a run whose data is mostly fine.
        if tally.bad and bad_count > cfg.max_bad_fraction * max(seen, 4 * cfg.batch_size):
            raise TrainingError(
                f"{bad_count} of {seen} samples could not be read (more than max_bad_fraction "
                f"{cfg.max_bad_fraction})" + (f", e.g. {unreadable[0]}" if unreadable else "")
            )
        # Micro-batches are equal everywhere (contrastive rows are gathered, means must weigh
        # alike): after unreadable samples, each process keeps as many as the one with fewest.
        size = tally.min_good // accum
        if size == 0 or size * accum * world < 2:
            # Nothing (or one image: no contrastive pair) left to learn from in this step; a
            # checkpoint due now is still written, so the last step always saves.
            skipped += 1
            if (step + 1) % cfg.save_every == 0 or step + 1 == cfg.steps:
                _save_from_main(run, parallel, optimizer, step + 1, dev, scaler)
            continue
        lr = lr_at(step, cfg)
        for group in optimizer.param_groups:
            group["lr"] = lr
        micro_batches = _micro_batches(batch, accum, size, dev)
        shards: list[BatchShard | None] = [None]
        if world * accum > 1:
            first = rank() * (cfg.batch_size // world)
            shards = [BatchShard(offset=first + j * size, global_size=cfg.batch_size, micro=j, accum=accum)
                      for j in range(accum)]
            if banked:
                _fill_bank(objective, micro_batches, shards, step, autocast)

        optimizer.zero_grad(set_to_none=True)
        sums: dict[str, torch.Tensor] = {}
        with deferred_center_updates(objective):  # centres move once per step, by the whole batch
            for j, (mb, shard) in enumerate(zip(micro_batches, shards)):
                views = {k: v for k, v in mb.items() if k not in _POSITIONAL_KEYS}
                # Only the last micro-batch's backward reduces the (accumulated) gradients.
                with parallel.micro_batch(last=j == accum - 1):
                    with autocast():
                        out = parallel.module(mb["view1"], mb["view2"], mb.get("text"), step=step, shard=shard,
                                              **views)
                    scaler.scale(out["loss"] / accum).backward()  # the scaler is the identity unless fp16
                for k, val in out.items():
                    sums[k] = sums.get(k, 0) + val.detach().float() / accum
        names = list(sums)
        losses = dict(zip(names, mean_across(torch.stack([sums[k] for k in names]))))
        bad = [k for k, val in losses.items() if k != "loss" and not torch.isfinite(val)]
        if bad or not torch.isfinite(losses["loss"]):
            term = bad[0] if bad else "loss"
            name = "the total loss" if term == "loss" else f"the {term} loss"
            raise TrainingError(f"{name} became {losses[term].item()} at step {step + 1}; stopped, {run.kept()}")
        parallel.reduce_replicated()
        if cfg.grad_clip > 0:
            scaler.unscale_(optimizer)
            parallel.clip_grad_norm_(params, cfg.grad_clip)
        scaler.step(optimizer)  # skipped (and the scale lowered) when fp16 gradients overflowed
        scaler.update()
        momentum = objective.update_teacher(step)
        n_since_log += size * accum * world

        done = step + 1
        saved = done % cfg.save_every == 0 or done == cfg.steps
        info = None
        if done % cfg.log_every == 0 or done == cfg.steps or done == start + 1:
            now = time.perf_counter()
            info = StepInfo(
                step=done, total_steps=cfg.steps, losses={k: val.item() for k, val in losses.items()},
                lr=lr, momentum=momentum, images_per_sec=n_since_log / max(now - t_log, 1e-9),
                elapsed_s=now - t_start, saved=saved,
                extra={**(metrics(step) if metrics else {}), "bad_samples": bad_count,
                       **({"skipped_steps": skipped} if skipped else {})},
            )
            t_log, n_since_log = now, 0
            # Logged before the checkpoint: a crash in between leaves a line past the checkpoint,
            # which a resume drops and logs again, never a checkpoint whose line is missing.
            if main:
                row = metrics_row(info)
                run.append_metrics(row)
                for logger in loggers:
                    logger.log_metrics(row)
        for logger in loggers:  # rank 0's only (the others have none); each keeps its own interval
            logger.log_pictures(done, objective.model)
        if saved:
            _save_from_main(run, parallel, optimizer, done, dev, scaler)
        if info is not None:
            yield info


def metrics_row(info: StepInfo) -> dict[str, Any]:
    """A logged step as its ``metrics.jsonl`` row: the step, each named loss, lr, momentum,
    throughput, time, then the extra figures."""
    return {"step": info.step, **info.losses, "lr": info.lr, "momentum": info.momentum,
            "images_per_sec": round(info.images_per_sec, 3), "elapsed_s": round(info.elapsed_s, 3),
            **info.extra}
