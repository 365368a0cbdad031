"""The run folder: the one owner of its layout, its all-or-nothing checkpoints, its metrics and settings.

A run folder holds

- ``model.safetensors`` + ``config.json``: the student at the last checkpoint, a model folder
  of its own (:mod:`detailclip_cli.core.store.io`);
- ``train_state.safetensors`` + ``train_state.json``: everything else a resume needs (the
  objective's teacher, centres and bridges, the optimiser, the step, the RNG states);
- ``metrics.jsonl``: one JSON line per logged step;
- ``run.json``: the settings the run was started with;
- ``.checkpoint-new/`` while a checkpoint is being written (see :meth:`RunFolder.save_checkpoint`).

Everything else asks a :class:`RunFolder`; no other module builds a path into it.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open

from detailclip_cli.core.config import ConfigError, ModelConfig, TrainConfig
from detailclip_cli.core.distributed import is_main_process
from detailclip_cli.core.store.io import (
    MODEL_FILE,
    atomic_write,
    load_tensors,
    read_model_config,
    save_model,
    save_tensors,
    write_json,
)
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

    # -- what it is ---------------------------------------------------------------------------

    def is_run(self) -> bool:
        """Whether the folder holds a run's training state (a saved or shipped model folder does not)."""
        return self.state_json.is_file()

    def has_settings(self) -> bool:
        """Whether the folder records the settings of the run that made it (``run.json``)."""
        return self.settings_file.is_file()

    # -- settings -----------------------------------------------------------------------------

    def create(self, settings: dict[str, Any]) -> None:
        """Start a new run here: create the folder, drop an old run's metrics, record ``settings``."""
        self.path.mkdir(parents=True, exist_ok=True)
        self.metrics_file.unlink(missing_ok=True)
        write_json(self.settings_file, settings)

    def recorded(self) -> dict[str, Any]:
        """``run.json`` as the run wrote it.

        Raises:
            ConfigError: the folder has no ``run.json`` (not a run folder).
        """
        self._require_settings()
        return json.loads(self.settings_file.read_text())

    def settings(self) -> tuple[ModelConfig, TrainConfig, dict[str, Any]]:
        """The model config, training config and other settings the run was started with."""
        self._require_settings()
        self.recover()  # a crash in the first checkpoint's renames may have held config.json back
        settings = self.recorded()
        return read_model_config(self.path), TrainConfig.from_dict(settings["train"]), settings

    def _require_settings(self) -> None:
        if not self.has_settings():
            raise ConfigError(f"cannot resume: {self.settings_file} is missing (not a run folder)")

    # -- checkpoints --------------------------------------------------------------------------

    def save_checkpoint(self, objective: torch.nn.Module, optimizer: torch.optim.Optimizer, step: int) -> None:
        """Write the student model and the training state for ``--resume``, all or nothing.

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
            save_tensors(stage / self.STATE_FILE, tensors, meta)
            py_state = random.getstate()
            np_state = np.random.get_state()
            write_json(stage / self.STATE_JSON, {
                "step": step,
                "param_groups": opt_state["param_groups"],
                "rng_python": [py_state[0], list(py_state[1]), py_state[2]],
                "rng_numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
            })
            save_model(objective.model, stage, metadata=meta)
            write_json(stage / self.STAGE_COMPLETE, {"step": step})
            _fsync_dir(stage)
        except OSError as exc:
            shutil.rmtree(stage, ignore_errors=True)
            raise TrainingError(f"could not save the checkpoint of step {step} in {self.path} "
                                f"({exc.strerror or exc}); the previous checkpoint there is intact") from None
        except BaseException:
            shutil.rmtree(stage, ignore_errors=True)
            raise
        self._roll_forward()

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

    def load_checkpoint(self, objective: torch.nn.Module, optimizer: torch.optim.Optimizer) -> int:
        """Restore the last checkpoint into ``objective`` and ``optimizer``; returns the step to continue from."""
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
        model_state = load_tensors(self.model_file)
        objective.model.load_state_dict(model_state)
        tensors = load_tensors(self.state_file)
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
        torch.set_rng_state(tensors["rng.torch"])
        py = meta["rng_python"]
        random.setstate((py[0], tuple(py[1]), py[2]))
        npst = meta["rng_numpy"]
        np.random.set_state((npst[0], np.array(npst[1], dtype=np.uint32), *npst[2:]))
        return int(meta["step"])

    def teacher_weights(self) -> dict[str, torch.Tensor]:
        """The EMA teacher's weights saved in the training state, by the names of the image tower
        it mirrors (``visual.*``, ``head.*``); empty for a run trained without a teacher."""
        prefix = "objective.teacher."
        return {k[len(prefix):]: v for k, v in load_tensors(self.state_file).items() if k.startswith(prefix)}

    # -- metrics ------------------------------------------------------------------------------

    def append_metrics(self, row: dict[str, Any]) -> None:
        """Add one logged step's row to ``metrics.jsonl``."""
        with open(self.metrics_file, "a") as f:
            f.write(json.dumps(row) + "\n")

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
        atomic_write(path, lambda tmp: tmp.write_text("".join(ln + "\n" for ln in kept)))

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
