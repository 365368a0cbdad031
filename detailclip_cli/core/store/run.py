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

Everything else asks a :class:`RunFolder`; no other module builds a path into it.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open

from detailclip_cli.core.config import ConfigError, ModelConfig, TrainConfig
from detailclip_cli.core.distributed import is_main_process
from detailclip_cli.core.store.io import (
    CONFIG_FILE,
    MODEL_FILE,
    atomic_write,
    check_finite,
    load_tensors,
    read_model_config,
    save_model,
    save_tensors,
    weights_checksum,
    write_json,
)
from detailclip_cli.core.store.lock import FileLock
from detailclip_cli.errors import TrainingError, UsageError


def step_tag(path: Path) -> str | None:
    """The ``step`` a checkpoint file was written at (safetensors header metadata)."""
    with safe_open(str(path), framework="pt") as f:
        return (f.metadata() or {}).get("step")


def read_metrics(path: Path, *, strict: bool = False) -> list[dict[str, Any]]:
    """The rows of a ``metrics.jsonl`` file, in order; blank lines are skipped.

    Args:
        path: the file (a run folder's :attr:`RunFolder.metrics_file`, or a copy of one).
        strict: a line that is not a JSON object with a ``step`` raises; otherwise such a line
            (one torn by a crash in mid-write) is skipped.

    Raises:
        UsageError: with ``strict``, naming the file and line.
    """
    rows = []
    for n, line in enumerate(Path(path).read_text(errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            if strict:
                raise UsageError(f"{path}:{n} is not a JSON line") from None
            continue
        if not isinstance(row, dict) or "step" not in row:
            if strict:
                raise UsageError(f"{path}:{n} has no 'step' (not a detailclip metrics.jsonl?)")
            continue
        rows.append(row)
    return rows


class RunFolder:
    """A training run's folder. Only this class knows its file names.

    Writes (checkpoints, metrics, settings) are for rank 0 of a distributed run; every process
    may read.

    Args:
        path: the folder (created by :meth:`create`).
    """

    STATE_FILE = "train_state.safetensors"
    STATE_JSON = "train_state.json"
    METRICS_FILE = "metrics.jsonl"
    RUN_FILE = "run.json"
    STAGE_DIR = ".checkpoint-new"  # a checkpoint being written; see save_checkpoint
    STAGE_COMPLETE = "COMPLETE"
    LOCK_FILE = ".lock"  # the writer's lock; see claim

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    # -- where things are (for messages and for readers outside the package) --------------------

    @property
    def model_file(self) -> Path:
        return self.path / MODEL_FILE

    @property
    def state_file(self) -> Path:
        return self.path / self.STATE_FILE

    @property
    def state_json(self) -> Path:
        return self.path / self.STATE_JSON

    @property
    def metrics_file(self) -> Path:
        return self.path / self.METRICS_FILE

    @property
    def settings_file(self) -> Path:
        return self.path / self.RUN_FILE

    @property
    def stage_dir(self) -> Path:
        return self.path / self.STAGE_DIR

    @property
    def lock_file(self) -> Path:
        return self.path / self.LOCK_FILE

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
        """Write the student model and the training state for ``--resume``, all or nothing.

        The training state holds the objective's state but the student's (teacher, centres,
        bridges), the optimiser, the fp16 loss scaler's state (``scaler``, when enabled), the
        step and the RNG states; ``train_state.json`` records the SHA-256 of the tensor file,
        ``config.json`` that of the model (:func:`~detailclip_cli.core.store.io.save_model`).

        The files are first written (each fsynced) into ``.checkpoint-new/``, which is then
        marked complete, and only then renamed one by one over the previous checkpoint. A crash
        while writing leaves the previous checkpoint untouched (the unmarked folder is
        discarded); a crash while renaming is finished by :meth:`recover` on resume. So a kill
        at any moment, or a full disk, leaves one whole checkpoint to resume from.
        """
        stage = self.stage_dir
        if stage.exists():
            shutil.rmtree(stage)
        stage.mkdir(parents=True)
        try:
            tensors = {f"objective.{k}": v for k, v in _objective_state(objective).items()}
            opt_state = optimizer.state_dict()
            for pid, state in opt_state["state"].items():
                for name, value in state.items():
                    tensors[f"optim.{pid}.{name}"] = value if torch.is_tensor(value) else torch.tensor(value)
            tensors["rng.torch"] = torch.get_rng_state()
            meta = {"step": str(step)}
            digest = save_tensors(stage / self.STATE_FILE, tensors, meta)
            py_state = random.getstate()
            np_state = np.random.get_state()
            write_json(stage / self.STATE_JSON, {
                "step": step,
                "param_groups": opt_state["param_groups"],
                "rng_python": [py_state[0], list(py_state[1]), py_state[2]],
                "rng_numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
                # scale, growth tracker ...: numbers only, so JSON holds them exactly
                "scaler": scaler.state_dict() if scaler is not None and scaler.is_enabled() else None,
                "state_sha256": digest,
            })
            save_model(objective.model, stage, metadata=meta)
            write_json(stage / self.STAGE_COMPLETE, {"step": step})
            _fsync_dir(stage)
        except OSError as exc:
            shutil.rmtree(stage, ignore_errors=True)
            raise TrainingError(f"could not save the checkpoint of step {step} in {self.path} "
                                f"({exc.strerror or exc}); {self._kept_before()}") from None
        except BaseException:
            shutil.rmtree(stage, ignore_errors=True)
            raise
        self._roll_forward()

    def _kept_before(self) -> str:
        step = self.checkpoint_step()
        return ("the previous checkpoint there is intact" + (f" (step {step})" if step is not None else "")
                if step is not None else "no earlier checkpoint was saved")

    def recover(self) -> None:
        """Finish or discard a checkpoint that a crash interrupted (see :meth:`save_checkpoint`).

        Only rank 0 touches the folder: under torchrun the others leave it alone.
        """
        stage = self.stage_dir
        if not stage.exists() or not is_main_process():
            return
        if (stage / self.STAGE_COMPLETE).exists():
            self._roll_forward()
        else:
            shutil.rmtree(stage)

    def _roll_forward(self) -> None:
        """Rename a complete staged checkpoint's files over the current ones; the marker goes last,
        so a crash in here leaves a still-marked folder that the next call finishes."""
        stage = self.stage_dir
        for path in sorted(stage.iterdir()):
            if path.name != self.STAGE_COMPLETE:
                os.replace(path, self.path / path.name)
        _fsync_dir(self.path)
        (stage / self.STAGE_COMPLETE).unlink()
        stage.rmdir()

    def checkpoint_steps(self) -> dict[str, str | None]:
        """The step each checkpoint file was written at, by file name (model and training state)."""
        return {MODEL_FILE: step_tag(self.model_file), self.STATE_FILE: step_tag(self.state_file)}

    def checkpoint_step(self) -> int | None:
        """The step of the last checkpoint, from the training state; None when there is none."""
        if not self.is_run():
            return None
        return json.loads(self.state_json.read_text()).get("step")

    def load_checkpoint(self, objective: torch.nn.Module, optimizer: torch.optim.Optimizer,
                        scaler: torch.amp.GradScaler | None = None) -> int:
        """Restore the last checkpoint into ``objective``, ``optimizer`` and the fp16 loss ``scaler``
        (when the run had one); returns the step to continue from.

        Both weight files are checked against their recorded SHA-256 (a checkpoint saved before
        checksums has none) and for non-finite values.

        Raises:
            ConfigError: missing or mismatched checkpoint files.
            ModelLoadError: a damaged weights file.
        """
        self.recover()
        for path in (self.model_file, self.state_file, self.state_json):
            if not path.exists():
                raise ConfigError(f"cannot resume: {path} is missing")
        meta = json.loads(self.state_json.read_text())
        # A crash between the writes of one checkpoint could leave files of two different steps.
        steps = self.checkpoint_steps()
        if len({*steps.values(), str(meta["step"])}) != 1:
            raise ConfigError(f"cannot resume: the checkpoint files in {self.path} are from different steps "
                              f"({', '.join(f'{k}: {v}' for k, v in steps.items())}, {self.STATE_JSON}: {meta['step']})")
        model_state = load_tensors(self.model_file, sha256=weights_checksum(self.path))
        check_finite(model_state, self.model_file)
        objective.model.load_state_dict(model_state)
        tensors = load_tensors(self.state_file, sha256=meta.get("state_sha256"))
        objective.load_state_dict(
            {**{f"model.{k}": v for k, v in objective.model.state_dict().items()},
             **{k[len("objective."):]: v for k, v in tensors.items() if k.startswith("objective.")}}
        )
        opt_state: dict[str, Any] = {"state": {}, "param_groups": meta["param_groups"]}
        for key, value in tensors.items():
            if key.startswith("optim."):
                _, pid, name = key.split(".", 2)
                opt_state["state"].setdefault(int(pid), {})[name] = value
        optimizer.load_state_dict(opt_state)
        if scaler is not None and scaler.is_enabled() and meta.get("scaler"):
            scaler.load_state_dict(meta["scaler"])  # else it starts afresh (a run that was not fp16)
        torch.set_rng_state(tensors["rng.torch"])
        py = meta["rng_python"]
        random.setstate((py[0], tuple(py[1]), py[2]))
        npst = meta["rng_numpy"]
        np.random.set_state((npst[0], np.array(npst[1], dtype=np.uint32), *npst[2:]))
        return int(meta["step"])

    def teacher_weights(self, *, verify: bool = True) -> dict[str, torch.Tensor]:
        """The EMA teacher's weights saved in the training state, by the names of the image tower
        it mirrors (``visual.*``, ``head.*``); empty for a run trained without a teacher.

        ``verify`` checks the state file against the SHA-256 ``train_state.json`` records (when it
        records one: states saved before 0.2 do not).
        """
        digest = None
        if verify and self.state_json.is_file():
            digest = json.loads(self.state_json.read_text()).get("state_sha256")
        prefix = "objective.teacher."
        tensors = load_tensors(self.state_file, sha256=digest)
        return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}

    # -- metrics ------------------------------------------------------------------------------

    def append_metrics(self, row: dict[str, Any]) -> None:
        """Add one logged step's row to ``metrics.jsonl``, whole or not at all.

        Raises:
            TrainingError: the line could not be written (e.g. a full disk); the part written is
                cut off again, so no torn line is left, and the message says what is kept.
        """
        line = (json.dumps(row) + "\n").encode()
        try:
            fd = os.open(self.metrics_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        except OSError as exc:
            raise self._log_error(row, exc) from None
        try:
            size = os.fstat(fd).st_size
            try:
                view = memoryview(line)
                while view:
                    view = view[os.write(fd, view):]
            except OSError as exc:
                try:
                    os.ftruncate(fd, size)  # freeing space, never needing any
                except OSError:
                    pass
                raise self._log_error(row, exc) from None
        finally:
            os.close(fd)

    def _log_error(self, row: dict[str, Any], exc: OSError) -> TrainingError:
        return TrainingError(f"could not log step {row.get('step')} to {self.metrics_file} "
                             f"({exc.strerror or exc}); {self.kept()}")

    def truncate_metrics(self, step: int) -> None:
        """Drop metric lines logged after ``step`` (a resumed run logs them again), and a line torn
        by a crash in mid-write."""
        path = self.metrics_file
        if not path.exists():
            return
        kept = []
        for line in path.read_text(errors="replace").splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and isinstance(record.get("step"), int) and record["step"] <= step:
                kept.append(line)
        try:
            atomic_write(path, lambda tmp: tmp.write_text("".join(ln + "\n" for ln in kept)))
        except OSError as exc:
            raise TrainingError(f"could not rewrite {path} ({exc.strerror or exc}); it is unchanged, "
                                f"{self.kept()}") from None

    def metrics(self) -> list[dict[str, Any]]:
        """The logged rows, in order (none when nothing was logged); a torn line is skipped."""
        return read_metrics(self.metrics_file) if self.metrics_file.is_file() else []


def _objective_state(objective: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Everything of the objective but the student model (which has its own file)."""
    return {k: v for k, v in objective.state_dict().items() if not k.startswith("model.")}


def _fsync_dir(folder: Path) -> None:
    """Make renames and new entries in ``folder`` durable (POSIX; a no-op where unsupported)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
