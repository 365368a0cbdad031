"""The training loop on the demo data: it learns, it resumes exactly, it checkpoints."""

from __future__ import annotations

import json
import math

import pytest
import torch

from detailclip_cli.core.config import TrainConfig, load_preset
from detailclip_cli.core.store.io import load_model
from detailclip_cli.core.training.optim import lr_at
from detailclip_cli.core.training.pretrain import train
from detailclip_cli.errors import TrainingError


def small_configs(**train_overrides):
    model_cfg, train_cfg = load_preset("tiny")
    model_cfg.vision.depth = 2
    model_cfg.head.out_dim = 256
    train_cfg = TrainConfig.from_dict({**train_cfg.to_dict(), "batch_size": 8, "steps": 6,
                                       "warmup_steps": 2, "log_every": 1, "save_every": 3,
                                       **train_overrides})
    return model_cfg, train_cfg


@pytest.mark.slow
def test_short_run_lowers_the_loss(demo_cache, tmp_path):
    model_cfg, train_cfg = small_configs(steps=40, batch_size=16, lr=2e-3, warmup_steps=4, save_every=40)
    infos = list(train(model_cfg, train_cfg, data="demo", out_dir=tmp_path / "run", device="cpu"))
    losses = [i.losses["loss"] for i in infos]
    assert len(losses) == 40
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < first - 0.5, (first, last)
    assert infos[-1].losses["rec"] < infos[0].losses["rec"]
    # Every logged step is in metrics.jsonl with each named loss.
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, 41))
    assert {"loss", "clip", "rec", "cls", "patch", "lr", "images_per_sec"} <= set(records[0])


@pytest.mark.slow
def test_resume_reaches_the_same_weights(demo_cache, tmp_path):
    model_cfg, train_cfg = small_configs(removal="random")
    full = list(train(model_cfg, train_cfg, out_dir=tmp_path / "full", device="cpu"))
    assert full[-1].step == 6

    part = tmp_path / "part"
    for info in train(model_cfg, train_cfg, out_dir=part, device="cpu"):
        if info.step == 3:  # checkpoint at step 3, then "crash"
            break
    resumed = list(train(model_cfg, train_cfg, out_dir=part, device="cpu", resume=True))
    assert [i.step for i in resumed] == [4, 5, 6]
    for a, b in zip(full[3:], resumed):
        assert a.losses == pytest.approx(b.losses, abs=1e-6)

    a, b = load_model(tmp_path / "full"), load_model(part)
    for (name, pa), (_, pb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(pa, pb), name
    # The teacher and centres (train state) match too.
    from safetensors.torch import load_file

    sa, sb = load_file(tmp_path / "full" / "train_state.safetensors"), load_file(part / "train_state.safetensors")
    assert sa.keys() == sb.keys()
    for k in sa:
        if not k.startswith("rng."):
            assert torch.equal(sa[k], sb[k]), k
    # metrics.jsonl has each step once.
    steps = [json.loads(line)["step"] for line in (part / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]


def test_run_folder_contents_and_model_roundtrip(demo_cache, tmp_path):
    model_cfg, train_cfg = small_configs(steps=2, save_every=2)
    list(train(model_cfg, train_cfg, out_dir=tmp_path, device="cpu"))
    names = {p.name for p in tmp_path.iterdir()}
    assert {"model.safetensors", "config.json", "train_state.safetensors", "train_state.json",
            "metrics.jsonl", "run.json"} <= names
    model = load_model(tmp_path)
    assert model.cfg == model_cfg
    run = json.loads((tmp_path / "run.json").read_text())
    assert run["train"]["steps"] == 2 and run["data"] == "demo"


def test_non_finite_loss_stops_and_keeps_last_checkpoint(demo_cache, tmp_path, monkeypatch):
    model_cfg, train_cfg = small_configs(steps=6, save_every=2)
    from detailclip_cli.core.method import objective as obj_mod

    real_forward = obj_mod.DetailCLIPObjective.forward

    def poisoned(self, *args, step, **kwargs):
        out = real_forward(self, *args, step=step, **kwargs)
        if step == 3:
            out["rec"] = out["rec"] * float("nan")
            out["loss"] = out["loss"] + out["rec"]
        return out

    monkeypatch.setattr(obj_mod.DetailCLIPObjective, "forward", poisoned)
    with pytest.raises(TrainingError, match="rec loss became nan at step 4"):
        list(train(model_cfg, train_cfg, out_dir=tmp_path, device="cpu"))
    state = json.loads((tmp_path / "train_state.json").read_text())
    assert state["step"] == 2
    load_model(tmp_path)  # still loadable


def test_lr_schedule():
    cfg = TrainConfig(steps=100, warmup_steps=10, lr=1.0, min_lr=0.0, warmup_start_lr=None)  # version 1's ramp
    assert lr_at(0, cfg) == pytest.approx(0.1)
    assert lr_at(9, cfg) == pytest.approx(1.0)
    assert lr_at(10, cfg) == pytest.approx(1.0)
    assert lr_at(55, cfg) == pytest.approx(0.5)
    assert lr_at(100, cfg) == pytest.approx(0.0)


@pytest.mark.slow
def test_resume_refuses_checkpoint_files_from_different_steps(demo_cache, tmp_path):
    from safetensors.torch import load_file

    from detailclip_cli.core.config import ConfigError
    from detailclip_cli.core.store.io import save_tensors

    model_cfg, train_cfg = small_configs(steps=2, save_every=1)
    list(train(model_cfg, train_cfg, out_dir=tmp_path, device="cpu"))
    state = load_file(tmp_path / "train_state.safetensors")
    save_tensors(tmp_path / "train_state.safetensors", state, {"step": "1"})  # as if the last save died half-way
    with pytest.raises(ConfigError, match="from different steps"):
        train(model_cfg, train_cfg, out_dir=tmp_path, device="cpu", resume=True)


def _caption_folder(root, good: int, broken: int):
    from PIL import Image

    root.mkdir()
    for i in range(good):
        Image.new("RGB", (64, 64), (10 * i, 100, 200)).save(root / f"g{i:02d}.png")
        (root / f"g{i:02d}.txt").write_text(f"a picture with {i} in it")
    for i in range(broken):
        (root / f"b{i:02d}.png").write_bytes(b"not a png at all")
        (root / f"b{i:02d}.txt").write_text("a broken picture")
    return root


def test_unreadable_samples_are_skipped_and_counted(tmp_path):
    data = _caption_folder(tmp_path / "data", good=23, broken=1)
    model_cfg, train_cfg = small_configs(steps=6, batch_size=4, save_every=6, max_bad_fraction=0.1)
    infos = list(train(model_cfg, train_cfg, data=str(data), out_dir=tmp_path / "run", device="cpu"))
    assert infos[-1].step == 6
    assert infos[-1].extra["bad_samples"] == 1  # one epoch of 6 batches read every sample once
    last = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["bad_samples"] == 1


def test_caption_problems_are_counted_in_run_json(tmp_path):
    data = _caption_folder(tmp_path / "data", good=10, broken=0)
    (data / "g00.txt").write_text("   \n")  # empty: the sample is skipped
    (data / "g01.txt").write_bytes(b"caf\xe9 on a table")  # not UTF-8: repaired
    (data / "g02.txt").write_text("word " * 200)  # far longer than the 32-token context
    model_cfg, train_cfg = small_configs(steps=1, batch_size=4, save_every=1)
    run = train(model_cfg, train_cfg, data=str(data), out_dir=tmp_path / "run", device="cpu")
    list(run)
    counts = json.loads((tmp_path / "run" / "run.json").read_text())["data_report"]
    assert counts["samples"] == 9 and counts["empty_captions"] == 1
    assert counts["invalid_utf8"] == 1 and counts["truncated_captions"] == 1
    assert "g00.txt" in counts["examples"]["empty_captions"]
    assert run.data_report.summary().startswith("1 empty_captions")


def test_mostly_broken_data_stops_with_an_example(tmp_path):
    data = _caption_folder(tmp_path / "data", good=6, broken=6)
    model_cfg, train_cfg = small_configs(steps=3, batch_size=4, max_bad_fraction=0.05)
    with pytest.raises(TrainingError, match=r"could not be read \(more than max_bad_fraction 0.05\), e.g. .*b0"):
        list(train(model_cfg, train_cfg, data=str(data), out_dir=tmp_path / "run", device="cpu"))


@pytest.mark.slow
def test_compiled_blocks_give_the_same_losses_and_checkpoint_keys(demo_cache, tmp_path):
    from safetensors.torch import load_file

    model_cfg, train_cfg = small_configs(steps=2, save_every=2)
    model_cfg.vision.depth, model_cfg.vision.width, model_cfg.vision.heads = 1, 48, 2
    model_cfg.decoder = None  # fewer distinct blocks to compile: student and teacher share a shape
    plain = list(train(model_cfg, train_cfg, out_dir=tmp_path / "plain", device="cpu"))
    compiled_cfg = TrainConfig.from_dict({**train_cfg.to_dict(), "compile": True})
    run = train(model_cfg, compiled_cfg, out_dir=tmp_path / "compiled", device="cpu")
    compiled = list(run)
    from detailclip_cli.core.model.vit import Block

    blocks = [m for m in run.objective.modules() if isinstance(m, Block)]
    assert len(blocks) == 2 and all(b._compiled_call_impl is not None for b in blocks)  # set by Module.compile
    for a, b in zip(plain, compiled):
        assert a.losses == pytest.approx(b.losses, rel=1e-4, abs=1e-5)
    assert load_file(tmp_path / "plain" / "model.safetensors").keys() == \
        load_file(tmp_path / "compiled" / "model.safetensors").keys()


def test_demo_views_are_never_mirrored():
    from detailclip_cli.core.training.trainset import train_augment

    flips = TrainConfig(hflip=0.5)  # the default has no flips: ask for them
    demo, user = train_augment(64, chiral=True, cfg=flips), train_augment(64, chiral=False, cfg=flips)
    assert demo.hflip == 0.0 and user.hflip == 0.5  # demo captions say left and right
    assert demo.crop_scale == user.crop_scale == (0.35, 1.0)  # otherwise the general small-image recipe


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_runs_close_to_fp32(demo_cache, tmp_path, precision):
    from detailclip_cli.core.device import autocast_dtype

    model_cfg, train_cfg = small_configs(steps=2, save_every=2, batch_size=4)
    model_cfg.vision.depth, model_cfg.vision.width, model_cfg.vision.heads = 1, 48, 2
    ref = list(train(model_cfg, train_cfg, out_dir=tmp_path / "fp32", device="cpu"))
    cfg = TrainConfig.from_dict({**train_cfg.to_dict(), "precision": precision})
    got = list(train(model_cfg, cfg, out_dir=tmp_path / precision, device="cpu"))
    # Step 1 starts from the same weights. (fp16's loss scaler may skip an early update whose
    # scaled gradients overflowed, so later steps are not comparable.)
    assert got[0].losses == pytest.approx(ref[0].losses, rel=0.05, abs=0.05)
    assert got[0].losses != ref[0].losses  # it did run in lower precision
    assert all(math.isfinite(v) for v in got[1].losses.values())
    model = load_model(tmp_path / precision)
    assert all(p.dtype == torch.float32 for p in model.parameters())  # weights stay fp32
    assert autocast_dtype("auto", torch.device("cpu")) is None
    assert autocast_dtype("auto", torch.device("cuda")) is torch.bfloat16


def test_lengths_left_at_one_epoch_resolve_from_the_data_in_a_library_call(demo_cache):
    """`prepare` sets every length left at None (one epoch) to the data's steps per epoch, so a
    library call trains as the CLI does (which resolves them earlier, to record them)."""
    from detailclip_cli.core.data import read_samples
    from detailclip_cli.core.training.trainset import prepare

    model_cfg, cfg = load_preset("tiny")
    cfg = TrainConfig.from_dict({**cfg.to_dict(), "batch_size": 40, "warmup_steps": None,
                                 "teacher_temp_warmup_steps": None})
    _, data, resolved = prepare(model_cfg, cfg, device="cpu", data="demo")
    per_epoch = len(read_samples("demo", split="train")) // 40  # 2000 // 40 = 50
    assert per_epoch == 50
    assert (resolved.warmup_steps, resolved.teacher_temp_warmup_steps) == (50, 50)
    assert data.cfg is resolved and resolved.steps == cfg.steps  # nothing else changes
    # Lengths given in steps are kept.
    given = TrainConfig.from_dict({**cfg.to_dict(), "warmup_steps": 7, "teacher_temp_warmup_steps": 9})
    assert prepare(model_cfg, given, device="cpu", data="demo").cfg is given
