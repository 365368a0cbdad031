"""--log-to: TensorBoard event files (read back with TensorBoard's own reader) and W&B offline runs
get the figures of metrics.jsonl, and the pictures of the fixed validation batch, from rank 0."""

from __future__ import annotations

import json

import numpy as np
import pytest

from detailclip_cli.core.config import ConfigError, TrainConfig, load_preset
from detailclip_cli.core.training.loggers import LogTo, parse_log_to


def tiny_configs(steps: int = 4):
    model_cfg, train_cfg = load_preset("tiny")
    model_cfg.vision.depth = 2
    model_cfg.text.layers = 1
    model_cfg.head.out_dim = 256
    return model_cfg, TrainConfig.from_dict({**train_cfg.to_dict(), "batch_size": 8, "steps": steps,
                                             "warmup_steps": 1, "log_every": 1, "save_every": steps})


def test_unknown_or_missing_logger_is_a_one_line_config_error(monkeypatch):
    assert parse_log_to("tensorboard, tensorboard") == ("tensorboard",)
    assert parse_log_to(None) == ()
    with pytest.raises(ConfigError, match="--log-to takes tensorboard, wandb .* not 'mlflow'"):
        parse_log_to("tensorboard,mlflow")
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    with pytest.raises(ConfigError, match=r"pip install 'detailclip\[wandb\]'"):
        parse_log_to("wandb")


@pytest.mark.slow
def test_tensorboard_gets_the_metrics_rows_and_the_pictures(demo_cache, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from detailclip_cli.core.training.pretrain import train
    from detailclip_cli.tools.pictures import PICTURE_IMAGES, training_pictures

    model_cfg, train_cfg = tiny_configs()
    out = tmp_path / "run"
    log_to = LogTo(names=("tensorboard",), pictures=training_pictures("demo"), pictures_every=2)
    list(train(model_cfg, train_cfg, data="demo", out_dir=out, device="cpu", log_to=log_to))

    events = EventAccumulator(str(out / "tensorboard"), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    tags = events.Tags()
    for name in ("loss", "clip", "rec", "cls", "patch", "lr", "momentum", "images_per_sec", "logit_scale"):
        logged = events.Scalars(name)
        assert [e.step for e in logged] == [r["step"] for r in rows], name
        assert [e.value for e in logged] == pytest.approx([r[name] for r in rows], rel=1e-6), name
    assert set(tags["images"]) == {"attention/map", "reconstruction/pasted"}
    for tag in tags["images"]:
        shown = events.Images(tag)
        assert [e.step for e in shown] == [2, 4]
        # Two rows (images, then map or reconstruction) of the fixed batch side by side.
        size = model_cfg.vision.image_size
        assert (shown[0].height, shown[0].width) == (2 * size, PICTURE_IMAGES * size)


@pytest.mark.slow
def test_wandb_offline_run_gets_the_metrics(demo_cache, tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb")
    from detailclip_cli.core.training.pretrain import train

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    logged: list[tuple[int, dict]] = []
    real_log = wandb.Run.log

    def recording_log(self, data, step=None, **kwargs):
        logged.append((step, dict(data)))
        return real_log(self, data, step=step, **kwargs)

    monkeypatch.setattr(wandb.Run, "log", recording_log)
    model_cfg, train_cfg = tiny_configs(steps=2)
    out = tmp_path / "run"
    pictures = lambda model: {"probe": np.zeros((8, 8, 3), dtype=np.uint8)}  # noqa: E731
    list(train(model_cfg, train_cfg, data="demo", out_dir=out, device="cpu",
               log_to=LogTo(names=("wandb",), pictures=pictures, pictures_every=2)))
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    scalars = [(step, data) for step, data in logged if "loss" in data]
    assert [step for step, _ in scalars] == [r["step"] for r in rows]
    for (_, data), row in zip(scalars, rows):
        assert data == {k: float(v) for k, v in row.items() if k != "step"}
    assert [(step, list(data)) for step, data in logged if "probe" in data] == [(2, ["probe"])]
    # The offline run sits in the run folder, with the picture, for a later `wandb sync`.
    runs = list((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("files/media/images/probe_2_*.png"))
