"""The run folder: its file names, all-or-nothing checkpoints, recovery and the run's settings."""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from detailclip_cli.core.config import ConfigError, ModelConfig, TrainConfig
from detailclip_cli.core.distributed import (
    is_main_process,
)
from detailclip_cli.core.store.io import (
    MODEL_FILE,
    load_tensors,
    read_model_config,
    save_model,
    save_tensors,
    write_json,
)
from detailclip_cli.errors import TrainingError

STATE_FILE = "train_state.safetensors"


STATE_JSON = "train_state.json"


METRICS_FILE = "metrics.jsonl"


RUN_FILE = "run.json"


def _objective_state(objective: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Everything of the objective but the student model (which has its own file)."""
    return {k: v for k, v in objective.state_dict().items() if not k.startswith("model.")}


STAGE_DIR = ".checkpoint-new"  # a checkpoint being written; see save_checkpoint


STAGE_COMPLETE = "COMPLETE"


def save_checkpoint(out_dir: Path, objective: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    step: int) -> None:
    """Write the student model and the training state for ``--resume``, all or nothing.

    The files are first written (each fsynced) into ``out_dir/.checkpoint-new/``, which is
    then marked complete, and only then renamed one by one over the previous checkpoint. A
    crash while writing leaves the previous checkpoint untouched (the unmarked folder is
    discarded); a crash while renaming is finished by :func:`recover_checkpoint` on resume.
    So a kill at any moment, or a full disk, leaves one whole checkpoint to resume from.
    """
    out_dir = Path(out_dir)
    stage = out_dir / STAGE_DIR
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
        save_tensors(stage / STATE_FILE, tensors, meta)
        py_state = random.getstate()
        np_state = np.random.get_state()
        write_json(stage / STATE_JSON, {
            "step": step,
            "param_groups": opt_state["param_groups"],
            "rng_python": [py_state[0], list(py_state[1]), py_state[2]],
            "rng_numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
        })
        save_model(objective.model, stage, metadata=meta)
        write_json(stage / STAGE_COMPLETE, {"step": step})
        _fsync_dir(stage)
    except OSError as exc:
        shutil.rmtree(stage, ignore_errors=True)
        raise TrainingError(f"could not save the checkpoint of step {step} in {out_dir} ({exc.strerror or exc}); "
                            "the previous checkpoint there is intact") from None
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    _roll_forward(stage, out_dir)


def recover_checkpoint(out_dir: Path) -> None:
    """Finish or discard a checkpoint that a crash interrupted (see :func:`save_checkpoint`).

    Only rank 0 touches the folder: under torchrun the others leave it alone.
    """
    stage = Path(out_dir) / STAGE_DIR
    if not stage.exists() or not is_main_process():
        return
    if (stage / STAGE_COMPLETE).exists():
        _roll_forward(stage, Path(out_dir))
    else:
        shutil.rmtree(stage)


def _roll_forward(stage: Path, out_dir: Path) -> None:
    """Rename a complete staged checkpoint's files over the current ones; the marker goes last,
    so a crash in here leaves a still-marked folder that the next call finishes."""
    for path in sorted(stage.iterdir()):
        if path.name != STAGE_COMPLETE:
            os.replace(path, out_dir / path.name)
    _fsync_dir(out_dir)
    (stage / STAGE_COMPLETE).unlink()
    stage.rmdir()


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


def load_checkpoint(out_dir: Path, objective: torch.nn.Module, optimizer: torch.optim.Optimizer) -> int:
    """Restore a run folder into ``objective`` and ``optimizer``; returns the step to continue from."""
    out_dir = Path(out_dir)
    recover_checkpoint(out_dir)
    for name in (MODEL_FILE, STATE_FILE, STATE_JSON):
        if not (out_dir / name).exists():
            raise ConfigError(f"cannot resume: {out_dir / name} is missing")
    meta = json.loads((out_dir / STATE_JSON).read_text())
    # A crash between the writes of one checkpoint could leave files of two different steps.
    steps = {name: step_tag(out_dir / name) for name in (MODEL_FILE, STATE_FILE)}
    if len({*steps.values(), str(meta["step"])}) != 1:
        raise ConfigError(f"cannot resume: the checkpoint files in {out_dir} are from different steps "
                          f"({', '.join(f'{k}: {v}' for k, v in steps.items())}, {STATE_JSON}: {meta['step']})")
    model_state = load_tensors(out_dir / MODEL_FILE)
    objective.model.load_state_dict(model_state)
    tensors = load_tensors(out_dir / STATE_FILE)
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


def step_tag(path: Path) -> str | None:
    """The ``step`` a checkpoint file was written at (safetensors header metadata)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return (f.metadata() or {}).get("step")


def read_run_settings(out_dir: Path) -> tuple[ModelConfig, TrainConfig, dict[str, Any]]:
    """The model config, training config and other settings a run folder was started with."""
    path = Path(out_dir) / RUN_FILE
    if not path.exists():
        raise ConfigError(f"cannot resume: {path} is missing (not a run folder)")
    recover_checkpoint(out_dir)  # a crash in the first checkpoint's renames may have held config.json back
    settings = json.loads(path.read_text())
    return read_model_config(out_dir), TrainConfig.from_dict(settings["train"]), settings
