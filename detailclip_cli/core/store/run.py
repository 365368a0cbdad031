"""The run folder: the one owner of its layout, its all-or-nothing checkpoints, its metrics and settings.

A run folder holds

- ``model.safetensors`` + ``config.json``: the student at the last checkpoint, a model folder
  of its own (:mod:`detailclip_cli.core.store.io`);
- ``train_state.safetensors`` + ``train_state.json``: everything else a resume needs (the
  objective's teacher, centres and bridges, the optimiser, the step, the RNG states);
- ``metrics.jsonl``: one JSON line per logged step;
- ``run.json``: the settings the run was started with;
- ``tensorboard/``, ``wandb/``: what ``--log-to`` loggers write (:meth:`RunFolder.log_dir`);
- ``.checkpoint-new/`` while a checkpoint is being written (see :meth:`RunFolder.save_checkpoint`);
- ``.lock``: the writer's lock (:meth:`RunFolder.claim`); it holds the writer's PID while held.

One writer at a time: a writer (a new run, a resumed one) claims the folder's lock before it
writes anything, and a new run refuses a folder that already holds files unless told to move
them aside (``force``). Readers never lock: every file a checkpoint replaces is renamed into
place whole, so a reader sees the previous checkpoint or the new one, never half of one.

Everything else asks a :class:`RunFolder`; no other module builds a path into it. The
checkpoint's files (the model's and the training state's, and the staging folder) are written
and read by its :class:`~detailclip_cli.core.store.checkpoint.Checkpoint`, the metrics log's
lines by :mod:`~detailclip_cli.core.store.metrics_log`.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import torch

from detailclip_cli.core.config import ConfigError, ModelConfig, TrainConfig
from detailclip_cli.core.distributed import is_main_process
from detailclip_cli.core.store.checkpoint import Checkpoint, step_tag
from detailclip_cli.core.store.io import CONFIG_FILE, MODEL_FILE, atomic_write, read_model_config, write_json
from detailclip_cli.core.store.lock import FileLock
from detailclip_cli.core.store.metrics_log import append_row, lines_through, read_metrics
from detailclip_cli.errors import TrainingError, UsageError

# step_tag and read_metrics live in checkpoint and metrics_log; they are imported from here too.
__all__ = ["RunFolder", "read_metrics", "step_tag"]


def _in_folder(name: str) -> property:
    """A read-only attribute of a :class:`RunFolder`: the path of its file or folder ``name``."""
    return property(lambda self: self.path / name, doc=f"``{name}`` in the run folder.")


class RunFolder:
    """A training run's folder. Only this class knows its file names (those of its checkpoint
    through its :class:`~detailclip_cli.core.store.checkpoint.Checkpoint`).

    Writes (checkpoints, metrics, settings) are for rank 0 of a distributed run; every process
    may read.

    Args:
        path: the folder (created by :meth:`create`).
    """

    # the checkpoint's (see save_checkpoint)
    STATE_FILE = Checkpoint.STATE_FILE
    STATE_JSON = Checkpoint.STATE_JSON
    STAGE_DIR = Checkpoint.STAGE_DIR  # a checkpoint being written
    STAGE_COMPLETE = Checkpoint.STAGE_COMPLETE
    # the run's
    METRICS_FILE = "metrics.jsonl"
    RUN_FILE = "run.json"
    LOCK_FILE = ".lock"  # the writer's lock; see claim

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._checkpoint = Checkpoint(self.path)

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    # -- where things are (for messages and for readers outside the package) --------------------

    model_file = _in_folder(MODEL_FILE)
    state_file = _in_folder(STATE_FILE)
    state_json = _in_folder(STATE_JSON)
    metrics_file = _in_folder(METRICS_FILE)
    settings_file = _in_folder(RUN_FILE)
    stage_dir = _in_folder(STAGE_DIR)
    lock_file = _in_folder(LOCK_FILE)

    def log_dir(self, name: str) -> Path:
        """The folder a logger (``--log-to NAME``, a :class:`~detailclip_cli.core.choices.LogTarget`)
        writes into: ``RUN/<name>/``. Not created here: the logger makes it when it starts."""
        if not name or "/" in name or "\\" in name or name.startswith("."):
            raise ValueError(f"a log folder name is one plain path component, not {name!r}")
        return self.path / name

    # -- what it is ---------------------------------------------------------------------------

    def is_run(self) -> bool:
        """Whether the folder holds a run's training state (a saved or shipped model folder does not)."""
        return self.state_json.is_file()

    def has_settings(self) -> bool:
        """Whether the folder records the settings of the run that made it (``run.json``)."""
        return self.settings_file.is_file()

    def contents(self) -> list[Path]:
        """What the folder holds besides its lock file (nothing when it does not exist)."""
        if not self.path.is_dir():
            return []
        return sorted(p for p in self.path.iterdir() if p.name != self.LOCK_FILE)

    # -- one writer at a time -------------------------------------------------------------------

    def claim(self, *, resume: bool, force: bool = False) -> FileLock:
        """Take this folder for writing, before anything is written: its exclusive lock, then the
        check that the folder may be written (a new run's folder is empty, unless ``force``).

        The lock is ``fcntl.flock`` on ``.lock`` (:class:`~detailclip_cli.core.store.lock.FileLock`):
        held until released or until this process ends, however it ends. Under torchrun only
        rank 0 locks (the others never write).

        Args:
            resume: the writer continues the run here (its files are expected).
            force: a new run may start in a folder that holds files; :meth:`create` moves them aside.

        Returns:
            The held lock; :meth:`FileLock.release` it when done writing.

        Raises:
            UsageError: the path is a file, or a new run's folder holds files and ``force`` is off.
            LockedError: another writer holds the folder (its PID named).
        """
        if self.path.exists() and not self.path.is_dir():
            raise UsageError(f"{self.path} is a file, not a run folder")
        if resume and not self.path.is_dir():
            raise ConfigError(f"cannot resume: {self.path} does not exist")
        lock = FileLock(self.lock_file, what=f"run folder {self.path}")
        if is_main_process():
            try:
                self.path.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise UsageError(f"cannot create the run folder {self.path} ({exc.strerror or exc})") from None
            lock.acquire()
        if not resume and not force and self.contents():
            lock.release()
            what = "a run" if self.has_settings() else "files"
            raise UsageError(f"{self.path} already holds {what}; continue a run with --resume {self.path}, "
                             f"write elsewhere with another --out, or give --force to move its files aside "
                             f"(to {self.path.name}.old-<date>-<time>)")
        return lock

    # -- settings -----------------------------------------------------------------------------

    def create(self, settings: dict[str, Any]) -> Path | None:
        """Start a new run here, the folder claimed (:meth:`claim`): move whatever it holds aside,
        then record ``settings``.

        The old files go, as they are, into a new sibling folder ``<name>.old-<date>-<time>``
        (``-2``, ``-3`` ... added if that exists), so nothing of an earlier run is lost or mixed
        into this one.

        Returns:
            The folder the old files went to, or None when there were none.

        Raises:
            TrainingError: the settings could not be written (e.g. a full disk).
        """
        self.path.mkdir(parents=True, exist_ok=True)
        aside = None
        old = self.contents()
        if old:
            stamp = time.strftime("%Y%m%d-%H%M%S")
            aside, n = self.path.with_name(f"{self.path.name}.old-{stamp}"), 1
            while aside.exists():
                n += 1
                aside = self.path.with_name(f"{self.path.name}.old-{stamp}-{n}")
            aside.mkdir()
            for entry in old:
                os.replace(entry, aside / entry.name)
        try:
            write_json(self.settings_file, settings)
        except OSError as exc:
            raise TrainingError(f"could not write {self.settings_file} ({exc.strerror or exc}); nothing was "
                                "trained") from None
        return aside

    def recorded(self) -> dict[str, Any]:
        """``run.json`` as the run wrote it.

        Raises:
            ConfigError: the folder has no ``run.json`` (not a run folder).
        """
        self._require_settings()
        return json.loads(self.settings_file.read_text())

    def settings(self) -> tuple[ModelConfig, TrainConfig, dict[str, Any]]:
        """The model config, training config and other settings the run was started with.

        Reads only (a reader never changes a folder a writer may hold): when a crash in the
        first checkpoint's renames held ``config.json`` back, the complete staged copy is read.
        """
        self._require_settings()
        settings = self.recorded()
        folder = self.path
        if not (folder / CONFIG_FILE).exists() and (self.stage_dir / self.STAGE_COMPLETE).exists():
            folder = self.stage_dir
        return read_model_config(folder), TrainConfig.from_dict(settings["train"]), settings

    def kept(self) -> str:
        """What a failed run leaves to resume from, for its message: ``the checkpoint of step N in
        DIR is kept`` (or that none was saved yet)."""
        step = self.checkpoint_step()
        if step is None:
            return f"no checkpoint was saved in {self.path} yet"
        return f"the checkpoint of step {step} in {self.path} is kept"

    def _require_settings(self) -> None:
        if not self.has_settings():
            raise ConfigError(f"cannot resume: {self.settings_file} is missing (not a run folder)")

    # -- checkpoints --------------------------------------------------------------------------

    def save_checkpoint(self, objective: torch.nn.Module, optimizer: torch.optim.Optimizer, step: int,
                        scaler: torch.amp.GradScaler | None = None) -> None:
        """Write the student model and the training state for ``--resume``, all or nothing:
        :meth:`Checkpoint.save <detailclip_cli.core.store.checkpoint.Checkpoint.save>`.

        Raises:
            TrainingError: a file could not be written (e.g. a full disk); the previous
                checkpoint is kept.
        """
        self._checkpoint.save(objective, optimizer, step, scaler)

    def recover(self) -> None:
        """Finish or discard a checkpoint that a crash interrupted (see :meth:`save_checkpoint`).

        Only rank 0 touches the folder: under torchrun the others leave it alone.
        """
        self._checkpoint.recover()

    def checkpoint_steps(self) -> dict[str, str | None]:
        """The step each checkpoint file was written at, by file name (model and training state)."""
        return self._checkpoint.steps()

    def checkpoint_step(self) -> int | None:
        """The step of the last checkpoint, from the training state; None when there is none."""
        return self._checkpoint.step()

    def load_checkpoint(self, objective: torch.nn.Module, optimizer: torch.optim.Optimizer,
                        scaler: torch.amp.GradScaler | None = None) -> int:
        """Restore the last checkpoint into ``objective``, ``optimizer`` and the fp16 loss ``scaler``
        (when the run had one); returns the step to continue from. The weight files are checked
        (:meth:`Checkpoint.load <detailclip_cli.core.store.checkpoint.Checkpoint.load>`).

        Raises:
            ConfigError: missing or mismatched checkpoint files.
            ModelLoadError: a damaged weights file.
        """
        return self._checkpoint.load(objective, optimizer, scaler)

    def teacher_weights(self, *, verify: bool = True) -> dict[str, torch.Tensor]:
        """The EMA teacher's weights saved in the training state, by the names of the image tower
        it mirrors (``visual.*``, ``head.*``); empty for a run trained without a teacher.

        ``verify`` checks the state file against the SHA-256 ``train_state.json`` records (when it
        records one: states saved before 0.2 do not).
        """
        return self._checkpoint.teacher_weights(verify=verify)

    # -- metrics ------------------------------------------------------------------------------

    def append_metrics(self, row: dict[str, Any]) -> None:
        """Add one logged step's row to ``metrics.jsonl``, whole or not at all.

        Raises:
            TrainingError: the line could not be written (e.g. a full disk); the part written is
                cut off again, so no torn line is left, and the message says what is kept.
        """
        try:
            append_row(self.metrics_file, row)
        except OSError as exc:
            raise TrainingError(f"could not log step {row.get('step')} to {self.metrics_file} "
                                f"({exc.strerror or exc}); {self.kept()}") from None

    def truncate_metrics(self, step: int) -> None:
        """Drop metric lines logged after ``step`` (a resumed run logs them again), and a line torn
        by a crash in mid-write."""
        path = self.metrics_file
        if not path.exists():
            return
        kept = lines_through(path, step)
        try:
            atomic_write(path, lambda tmp: tmp.write_text("".join(ln + "\n" for ln in kept)))
        except OSError as exc:
            raise TrainingError(f"could not rewrite {path} ({exc.strerror or exc}); it is unchanged, "
                                f"{self.kept()}") from None

    def metrics(self) -> list[dict[str, Any]]:
        """The logged rows, in order (none when nothing was logged); a torn line is skipped."""
        return read_metrics(self.metrics_file) if self.metrics_file.is_file() else []

