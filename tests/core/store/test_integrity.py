"""What is saved is what loads: weight checksums, non-finite weights, the fp16 scaler in the
checkpoint, and full-disk failures that leave no torn file (issue 19, findings 4 and 5)."""

from __future__ import annotations

import errno
import json
import shutil
from pathlib import Path

import pytest
import torch
from helpers import register, small_model_cfg
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from detailclip_cli.core.model.detailclip import DetailCLIP
from detailclip_cli.core.store import io as io_mod
from detailclip_cli.core.store import run as run_mod
from detailclip_cli.core.store.io import CHECKSUM_KEY, CONFIG_FILE, MODEL_FILE, ModelLoadError, load_model, save_model
from detailclip_cli.core.store.lookup import resolve_model
from detailclip_cli.core.store.run import RunFolder
from detailclip_cli.core.store.shipped import shipped_model_dir
from detailclip_cli.errors import TrainingError

V1_CONFIGS = Path(__file__).parents[2] / "data" / "v1-shipped-model"


class _Objective(torch.nn.Module):
    """The least an objective is for a checkpoint: the student as ``model``, plus one state tensor."""

    def __init__(self, model: DetailCLIP):
        super().__init__()
        self.model = model
        self.register_buffer("center", torch.arange(4.0))


@pytest.fixture
def saved(tmp_path) -> Path:
    torch.manual_seed(0)
    return save_model(DetailCLIP(small_model_cfg()), tmp_path / "m")


def _tamper(folder: Path, value: float) -> None:
    """Write ``value`` into the first floating tensor of the folder's weights."""
    tensors = load_file(str(folder / MODEL_FILE))
    key = next(k for k, v in tensors.items() if v.is_floating_point())
    tensors[key] = tensors[key].clone()
    tensors[key].view(-1)[0] = value
    save_file(tensors, str(folder / MODEL_FILE))


def test_the_checksum_is_checked_and_no_verify_skips_it(saved):
    load_model(saved)
    _tamper(saved, 0.5)
    with pytest.raises(ModelLoadError, match="has changed since it was saved.*--no-verify") as info:
        load_model(saved)
    assert "\n" not in str(info.value)
    load_model(saved, verify=False)
    resolve_model(str(saved), verify=False)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_weights_are_refused_even_without_verifying(saved, value):
    _tamper(saved, value)
    with pytest.raises(ModelLoadError, match="non-finite weights"):
        load_model(saved, verify=False)
    config = json.loads((saved / CONFIG_FILE).read_text())
    del config[CHECKSUM_KEY]  # a folder from before checksums: the finiteness check still holds
    (saved / CONFIG_FILE).write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match=f"{MODEL_FILE} holds non-finite weights"):
        load_model(saved)


def test_models_saved_before_checksums_still_load(tmp_path):
    # The shipped model and version 1's configs carry no checksum: nothing to verify, still loads.
    assert "weights_sha256" not in (V1_CONFIGS / CONFIG_FILE).read_text()
    folder = tmp_path / "v1"
    folder.mkdir()
    shutil.copy(V1_CONFIGS / CONFIG_FILE, folder / CONFIG_FILE)
    torch.manual_seed(0)
    model = DetailCLIP(io_mod.read_model_config(folder))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / MODEL_FILE))
    assert io_mod.weights_checksum(folder) is None
    load_model(folder)
    assert load_model(shipped_model_dir()) is not None


@pytest.mark.parametrize("change, words", [
    ({"vision": {"patch_size": -8}}, "patch_size must be at least 1"),
    ({"vision": {"std": [0, 0, 0]}}, "std must be positive"),
    ({"vision": {"image_size": "64"}}, "image_size must be an integer"),
    ({"embed_dim": 0}, "embed_dim must be at least 1"),
])
def test_config_json_values_out_of_range_are_refused_in_one_line(saved, change, words):
    config = json.loads((saved / CONFIG_FILE).read_text())
    for key, value in change.items():
        config[key] = {**config[key], **value} if isinstance(value, dict) else value
    (saved / CONFIG_FILE).write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match=words) as info:
        load_model(saved)
    assert str(saved / CONFIG_FILE) in str(info.value) and "\n" not in str(info.value)


def test_a_pickle_named_safetensors_as_open_clip_weights_is_one_line(tmp_path):
    name = register(tmp_path, "detailclip-test-evil-st")
    evil = tmp_path / "evil.safetensors"
    torch.save({"x": torch.zeros(1)}, evil)  # a pickle (zip) under a safetensors name
    with pytest.raises(ModelLoadError, match="not a readable safetensors file") as info:
        resolve_model(f"open_clip:{name}", pretrained=str(evil))
    assert "\n" not in str(info.value)


def _checkpoint_parts():
    torch.manual_seed(0)
    objective = _Objective(DetailCLIP(small_model_cfg()))
    optimizer = torch.optim.AdamW(objective.model.parameters(), lr=1e-3)
    return objective, optimizer


def test_the_fp16_loss_scaler_is_part_of_the_checkpoint(tmp_path):
    objective, optimizer = _checkpoint_parts()
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10, growth_interval=7)
    scaler.load_state_dict({**scaler.state_dict(), "scale": 96.0, "_growth_tracker": 3})
    run = RunFolder(tmp_path)
    run.save_checkpoint(objective, optimizer, 5, scaler)
    assert json.loads(run.state_json.read_text())["scaler"] == {
        "scale": 96.0, "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 7, "_growth_tracker": 3}
    fresh = torch.amp.GradScaler("cpu")  # a resumed run's scaler starts at 65536 ...
    assert run.load_checkpoint(*_checkpoint_parts(), fresh) == 5
    assert fresh.state_dict() == scaler.state_dict()  # ... and goes on from the saved state
    assert fresh.get_scale() == 96.0


def test_the_training_state_file_is_checked_against_its_checksum(tmp_path):
    objective, optimizer = _checkpoint_parts()
    run = RunFolder(tmp_path)
    run.save_checkpoint(objective, optimizer, 1)
    tensors = load_file(str(run.state_file))
    tensors["objective.center"] = tensors["objective.center"] + 1
    save_file(tensors, str(run.state_file), metadata={"step": "1"})
    with pytest.raises(ModelLoadError, match="train_state.safetensors has changed since it was saved"):
        run.load_checkpoint(*_checkpoint_parts())


def test_a_full_disk_in_safetensors_is_one_line_and_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    objective, optimizer = _checkpoint_parts()
    run = RunFolder(tmp_path)
    run.save_checkpoint(objective, optimizer, 1)

    def full(*args, **kwargs):
        raise SafetensorError("Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "
                              "\"No space left on device\" }) (os error 28)")

    monkeypatch.setattr(io_mod, "save_file", full)
    with pytest.raises(TrainingError) as info:
        run.save_checkpoint(objective, optimizer, 2)
    message = str(info.value)
    assert "\n" not in message and "No space left on device" in message
    assert f"checkpoint of step 2 in {tmp_path}" in message and "previous checkpoint there is intact (step 1)" in message
    assert not run.stage_dir.exists() and run.checkpoint_step() == 1


def test_a_full_disk_while_logging_leaves_no_torn_line(tmp_path, monkeypatch):
    run = RunFolder(tmp_path)
    run.append_metrics({"step": 1, "loss": 2.0})
    real_write = run_mod.os.write

    def half_then_full(fd, data):
        real_write(fd, bytes(data[: len(data) // 2]))  # the first half reaches the file
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(run_mod.os, "write", half_then_full)
    with pytest.raises(TrainingError) as info:
        run.append_metrics({"step": 2, "loss": 1.5})
    monkeypatch.setattr(run_mod.os, "write", real_write)
    assert str(info.value) == (f"could not log step 2 to {run.metrics_file} (No space left on device); "
                               f"no checkpoint was saved in {tmp_path} yet")
    assert run.metrics_file.read_text() == '{"step": 1, "loss": 2.0}\n'  # the half line was cut off again
