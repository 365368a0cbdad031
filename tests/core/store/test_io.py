"""Model folders: save/load round trips, and load errors that name the offending file."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil

import pytest
import torch
from helpers import small_model_cfg
from safetensors import safe_open

from detailclip_cli.core.model.detailclip import DetailCLIP
from detailclip_cli.core.store.io import (
    CHECKSUM_KEY,
    CONFIG_FILE,
    MODEL_FILE,
    ModelLoadError,
    load_model,
    save_model,
)
from detailclip_cli.core.store.run import RunFolder, read_metrics
from detailclip_cli.errors import UsageError


@pytest.fixture(scope="module")
def model() -> DetailCLIP:
    torch.manual_seed(0)
    m = DetailCLIP(small_model_cfg()).eval()
    with torch.no_grad():  # make every tensor non-default so a lost tensor would show
        for p in m.parameters():
            p.add_(0.01 * torch.randn_like(p))
    return m


@pytest.fixture(scope="module")
def inputs():
    g = torch.Generator().manual_seed(1)
    return torch.randn(2, 3, 64, 64, generator=g), torch.randint(0, 500, (2, 8), generator=g)


@pytest.fixture
def saved(model, tmp_path):
    return save_model(model, tmp_path / "m")


def _outputs(m: DetailCLIP, images, text):
    with torch.no_grad():
        tokens = m.visual(images)
        pred, features = m.decoder(tokens, torch.arange(64).repeat(2, 1))
        return [m.encode_image(images), m.encode_text(text), m.head(tokens), pred, features, m.scale()]


def test_round_trip_gives_identical_outputs(model, saved, inputs):
    assert sorted(p.name for p in saved.iterdir()) == [CONFIG_FILE, MODEL_FILE]  # no temp files left
    written = json.loads((saved / CONFIG_FILE).read_text())
    assert written.pop(CHECKSUM_KEY) == hashlib.sha256((saved / MODEL_FILE).read_bytes()).hexdigest()
    assert written == json.loads(json.dumps(model.cfg.to_dict()))
    loaded = load_model(saved)
    assert not loaded.training
    assert loaded.cfg == model.cfg
    for a, b in zip(model.state_dict().values(), loaded.state_dict().values()):
        assert a.dtype == b.dtype and torch.equal(a, b)
    for a, b in zip(_outputs(model, *inputs), _outputs(loaded, *inputs)):
        assert torch.equal(a, b)


def test_fp16_storage_loads_as_fp32_with_close_outputs(model, tmp_path, inputs):
    full = save_model(model, tmp_path / "fp32")
    half = save_model(model, tmp_path / "fp16", dtype=torch.float16, metadata={"note": "half"})
    size32, size16 = (full / MODEL_FILE).stat().st_size, (half / MODEL_FILE).stat().st_size
    assert 0.45 < size16 / size32 < 0.55
    with safe_open(str(half / MODEL_FILE), framework="pt") as f:
        assert f.metadata() == {"format": "pt", "note": "half"}
        assert f.get_tensor("visual.pos_embed").dtype == torch.float16
    loaded = load_model(half)
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
    for a, b in zip(_outputs(model, *inputs), _outputs(loaded, *inputs)):
        torch.testing.assert_close(b, a, rtol=1e-2, atol=1e-2)


def test_model_without_head_and_decoder_round_trips(tmp_path, inputs):
    torch.manual_seed(1)
    m = DetailCLIP(dataclasses.replace(small_model_cfg(), head=None, decoder=None)).eval()
    loaded = load_model(save_model(m, tmp_path / "clip"))
    assert loaded.head is None and loaded.decoder is None
    with torch.no_grad():
        assert torch.equal(m.encode_image(inputs[0]), loaded.encode_image(inputs[0]))


def test_missing_config_is_named(saved):
    (saved / CONFIG_FILE).unlink()
    with pytest.raises(ModelLoadError, match=CONFIG_FILE) as info:
        load_model(saved)
    assert str(saved / CONFIG_FILE) in str(info.value)
    assert isinstance(info.value, UsageError)


def test_missing_weights_are_named(saved):
    (saved / MODEL_FILE).unlink()
    with pytest.raises(ModelLoadError, match=MODEL_FILE):
        load_model(saved)


def test_not_a_folder(tmp_path):
    with pytest.raises(ModelLoadError, match="not a model folder"):
        load_model(tmp_path / "nowhere")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ModelLoadError, match="file"):
        load_model(tmp_path / "file")


@pytest.mark.parametrize("content", [b"garbage, not safetensors", b"", b"\x08\x00\x00\x00\x00\x00\x00\x00{bad}xyz"])
def test_garbage_weights_are_named(saved, content):
    (saved / MODEL_FILE).write_bytes(content)
    with pytest.raises(ModelLoadError, match=MODEL_FILE) as info:
        load_model(saved)
    assert str(saved / MODEL_FILE) in str(info.value)


def test_garbage_config_is_named(saved):
    (saved / CONFIG_FILE).write_text("{not json")
    with pytest.raises(ModelLoadError, match=CONFIG_FILE):
        load_model(saved)


def test_config_with_unknown_key_or_newer_version_is_named(saved):
    data = json.loads((saved / CONFIG_FILE).read_text())
    (saved / CONFIG_FILE).write_text(json.dumps({**data, "colour": "blue"}))
    with pytest.raises(ModelLoadError, match=f"{CONFIG_FILE}.*colour"):
        load_model(saved)
    (saved / CONFIG_FILE).write_text(json.dumps({**data, "version": data["version"] + 1}))
    with pytest.raises(ModelLoadError, match=f"{CONFIG_FILE}.*newer"):
        load_model(saved)


def test_config_that_does_not_match_the_weights(saved):
    data = json.loads((saved / CONFIG_FILE).read_text())
    # a different width: every shape differs
    wider = json.loads(json.dumps(data))
    wider["vision"]["width"] = 96
    (saved / CONFIG_FILE).write_text(json.dumps(wider))
    with pytest.raises(ModelLoadError, match=f"{MODEL_FILE} does not match .*{CONFIG_FILE}"):
        load_model(saved)
    # no head in the config but head weights in the file
    (saved / CONFIG_FILE).write_text(json.dumps({**data, "head": None}))
    with pytest.raises(ModelLoadError, match=f"{MODEL_FILE} does not match .*{CONFIG_FILE}.*unexpected"):
        load_model(saved)
    # a deeper config than the weights hold
    deeper = json.loads(json.dumps(data))
    deeper["vision"]["depth"] = 3
    (saved / CONFIG_FILE).write_text(json.dumps(deeper))
    with pytest.raises(ModelLoadError, match=f"{MODEL_FILE} does not match .*{CONFIG_FILE}.*missing"):
        load_model(saved)


def test_invalid_config_values_are_a_load_error_naming_the_file(saved):
    """A config.json whose values cannot build a model is a ModelLoadError, like any bad file."""
    data = json.loads((saved / CONFIG_FILE).read_text())
    data["vision"]["image_size"] = 60  # not a multiple of patch_size 8
    (saved / CONFIG_FILE).write_text(json.dumps(data))
    with pytest.raises(ModelLoadError, match=f"{CONFIG_FILE}.*image_size 60"):
        load_model(saved)


@pytest.mark.parametrize("text", ['"abc"', "5", "null"])
def test_config_that_is_not_an_object_is_named(saved, text):
    (saved / CONFIG_FILE).write_text(text)
    with pytest.raises(ModelLoadError, match=CONFIG_FILE):
        load_model(saved)


def test_loading_copies_to_another_folder(saved, tmp_path, inputs, model):
    copy = tmp_path / "copy"
    shutil.copytree(saved, copy)
    loaded = load_model(copy)
    with torch.no_grad():
        assert torch.equal(loaded.encode_text(inputs[1]), model.encode_text(inputs[1]))


def test_run_folder_metrics_rows_lenient_and_strict(tmp_path):
    """A reader of a live run skips a torn last line; ``strict`` (for a file a person names) says where it is."""
    run = RunFolder(tmp_path)
    assert run.metrics() == [] and not run.is_run() and not run.has_settings()
    run.create({"train": {}})
    assert run.has_settings() and run.recorded() == {"train": {}}
    run.append_metrics({"step": 1, "loss": 2.0})
    run.append_metrics({"step": 2, "loss": 1.5})
    with open(run.metrics_file, "a") as f:
        f.write('{"step": 3, "lo')
    assert [r["step"] for r in run.metrics()] == [1, 2]
    with pytest.raises(UsageError, match=r"metrics.jsonl:3 is not a JSON line"):
        read_metrics(run.metrics_file, strict=True)
    run.metrics_file.write_text('{"step": 1}\n\n[1, 2]\n')
    with pytest.raises(UsageError, match=r"metrics.jsonl:3 has no 'step' \(not a detailclip metrics.jsonl\?\)"):
        read_metrics(run.metrics_file, strict=True)
