"""A run's checkpoint: the student model and the training state, replaced all or nothing.

The checkpoint is part of a run folder (:class:`~detailclip_cli.core.store.run.RunFolder`,
whose ``save_checkpoint``, ``load_checkpoint`` ... call a :class:`Checkpoint`): as
:mod:`~detailclip_cli.core.store.io` knows a model folder's two files, this module knows the
checkpoint's own, and nothing else asks for them but the run folder.

- ``model.safetensors`` + ``config.json``: the student, a model folder of its own;
- ``train_state.safetensors`` + ``train_state.json``: everything else a resume needs (the
  objective's teacher, centres and bridges, the optimiser, the fp16 loss scaler, the step, the
  RNG states): :func:`pack_state` and :func:`restore_state` are the two directions;
- ``.checkpoint-new/`` while a checkpoint is being written (see :meth:`Checkpoint.save`).
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

from detailclip_cli.core.config import ConfigError
from detailclip_cli.core.distributed import is_main_process
from detailclip_cli.core.store.io import (
    MODEL_FILE,
    check_finite,
    load_tensors,
    save_model,
    save_tensors,
    weights_checksum,
    write_json,
)
from detailclip_cli.errors import TrainingError


class Checkpoint:
    """The last checkpoint in a run folder.

    Writes are for rank 0 of a distributed run; every process may read.

    Args:
        folder: the run folder.
    """

    STATE_FILE = "train_state.safetensors"
    STATE_JSON = "train_state.json"
    STAGE_DIR = ".checkpoint-new"  # a checkpoint being written; see save
    STAGE_COMPLETE = "COMPLETE"  # in STAGE_DIR once every file is there

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)

    @property
    def state_json(self) -> Path:
        return self.folder / self.STATE_JSON

    def save(self, objective: torch.nn.Module, optimizer: torch.optim.Optimizer, step: int,
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

        Raises:
            TrainingError: a file could not be written (e.g. a full disk); the message says
                what is kept.
        """
        stage = self.folder / self.STAGE_DIR
        if stage.exists():
            shutil.rmtree(stage)
        stage.mkdir(parents=True)
        try:
            tensors, state = pack_state(objective, optimizer, step, scaler)
            meta = {"step": str(step)}
            state["state_sha256"] = save_tensors(stage / self.STATE_FILE, tensors, meta)
            write_json(stage / self.STATE_JSON, state)
            save_model(objective.model, stage, metadata=meta)
            write_json(stage / self.STAGE_COMPLETE, {"step": step})
            _fsync_dir(stage)
        except BaseException as exc:
            shutil.rmtree(stage, ignore_errors=True)
            if isinstance(exc, OSError):
                raise TrainingError(f"could not save the checkpoint of step {step} in {self.folder} "
                                    f"({exc.strerror or exc}); {self._kept_before()}") from None
            raise
        self._roll_forward()

    def _kept_before(self) -> str:
        step = self.step()
        return ("the previous checkpoint there is intact" + (f" (step {step})" if step is not None else "")
                if step is not None else "no earlier checkpoint was saved")

    def recover(self) -> None:
        """Finish or discard a checkpoint that a crash interrupted (see :meth:`save`).

        Only rank 0 touches the folder: under torchrun the others leave it alone.
        """
        stage = self.folder / self.STAGE_DIR
        if not stage.exists() or not is_main_process():
            return
        if (stage / self.STAGE_COMPLETE).exists():
            self._roll_forward()
        else:
            shutil.rmtree(stage)

    def _roll_forward(self) -> None:
        """Rename a complete staged checkpoint's files over the current ones; the marker goes last,
        so a crash in here leaves a still-marked folder that the next call finishes."""
        stage = self.folder / self.STAGE_DIR
        for path in sorted(stage.iterdir()):
            if path.name != self.STAGE_COMPLETE:
                os.replace(path, self.folder / path.name)
        _fsync_dir(self.folder)
        (stage / self.STAGE_COMPLETE).unlink()
        stage.rmdir()

    def steps(self) -> dict[str, str | None]:
        """The step each checkpoint file was written at, by file name (model and training state)."""
        return {MODEL_FILE: step_tag(self.folder / MODEL_FILE),
                self.STATE_FILE: step_tag(self.folder / self.STATE_FILE)}

    def step(self) -> int | None:
        """The step of the last checkpoint, from the training state; None when there is none."""
        if not self.state_json.is_file():
            return None
        return json.loads(self.state_json.read_text()).get("step")

    def load(self, objective: torch.nn.Module, optimizer: torch.optim.Optimizer,
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
        model_file, state_file = self.folder / MODEL_FILE, self.folder / self.STATE_FILE
        for path in (model_file, state_file, self.state_json):
            if not path.exists():
                raise ConfigError(f"cannot resume: {path} is missing")
        meta = json.loads(self.state_json.read_text())
        # A crash between the writes of one checkpoint could leave files of two different steps.
        steps = self.steps()
        if len({*steps.values(), str(meta["step"])}) != 1:
            raise ConfigError(f"cannot resume: the checkpoint files in {self.folder} are from different steps "
                              f"({', '.join(f'{k}: {v}' for k, v in steps.items())}, {self.STATE_JSON}: {meta['step']})")
        model_state = load_tensors(model_file, sha256=weights_checksum(self.folder))
        check_finite(model_state, model_file)
        objective.model.load_state_dict(model_state)
        restore_state(objective, optimizer, scaler, load_tensors(state_file, sha256=meta.get("state_sha256")), meta)
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
        tensors = load_tensors(self.folder / self.STATE_FILE, sha256=digest)
        return {k[len(_TEACHER):]: v for k, v in tensors.items() if k.startswith(_TEACHER)}


def step_tag(path: Path) -> str | None:
    """The ``step`` a checkpoint file was written at (safetensors header metadata)."""
    with safe_open(str(path), framework="pt") as f:
        return (f.metadata() or {}).get("step")


# -- the training state ------------------------------------------------------------------------

# Key prefixes in the training state's tensors: the objective (less the student), the optimiser.
_OBJECTIVE, _OPTIM, _TEACHER = "objective.", "optim.", "objective.teacher."


def pack_state(objective: torch.nn.Module, optimizer: torch.optim.Optimizer, step: int,
               scaler: torch.amp.GradScaler | None = None) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The training state at ``step`` as (tensors, JSON document); the RNG states are read now.

    Returns:
        ``objective.*`` (the objective's state but the student model, which has its own file),
        ``optim.<param id>.<name>`` and ``rng.torch`` tensors; and a document with the step,
        the optimiser's parameter groups, Python's and NumPy's RNG states and the loss scaler's
        state (None when it is off).
    """
    tensors = {f"{_OBJECTIVE}{k}": v for k, v in objective.state_dict().items() if not k.startswith("model.")}
    opt_state = optimizer.state_dict()
    for pid, state in opt_state["state"].items():
        for name, value in state.items():
            tensors[f"{_OPTIM}{pid}.{name}"] = value if torch.is_tensor(value) else torch.tensor(value)
    tensors["rng.torch"] = torch.get_rng_state()
    py_state = random.getstate()
    np_state = np.random.get_state()
    document = {
        "step": step,
        "param_groups": opt_state["param_groups"],
        "rng_python": [py_state[0], list(py_state[1]), py_state[2]],
        "rng_numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
        # scale, growth tracker ...: numbers only, so JSON holds them exactly
        "scaler": scaler.state_dict() if scaler is not None and scaler.is_enabled() else None,
    }
    return tensors, document


def restore_state(objective: torch.nn.Module, optimizer: torch.optim.Optimizer,
                  scaler: torch.amp.GradScaler | None, tensors: dict[str, torch.Tensor],
                  document: dict[str, Any]) -> None:
    """Load what :func:`pack_state` gave into ``objective`` (whose student model is loaded
    already), ``optimizer`` and ``scaler``, and set the RNG states."""
    objective.load_state_dict(
        {**{f"model.{k}": v for k, v in objective.model.state_dict().items()},
         **{k[len(_OBJECTIVE):]: v for k, v in tensors.items() if k.startswith(_OBJECTIVE)}}
    )
    opt_state: dict[str, Any] = {"state": {}, "param_groups": document["param_groups"]}
    for key, value in tensors.items():
        if key.startswith(_OPTIM):
            _, pid, name = key.split(".", 2)
            opt_state["state"].setdefault(int(pid), {})[name] = value
    optimizer.load_state_dict(opt_state)
    if scaler is not None and scaler.is_enabled() and document.get("scaler"):
        scaler.load_state_dict(document["scaler"])  # else it starts afresh (a run that was not fp16)
    torch.set_rng_state(tensors["rng.torch"])
    py = document["rng_python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    npst = document["rng_numpy"]
    np.random.set_state((npst[0], np.array(npst[1], dtype=np.uint32), *npst[2:]))


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
