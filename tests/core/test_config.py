"""Config dataclasses: JSON round trips, presets, and the errors people see."""

from __future__ import annotations

import dataclasses
import json

import pytest

from detailclip_cli.core.config import (
    CONFIG_VERSION,
    PRESETS,
    ConfigError,
    ModelConfig,
    TrainConfig,
    VisionConfig,
    configs_from_dict,
    load_config_file,
    load_preset,
)
from detailclip_cli.errors import UsageError


@pytest.mark.parametrize("name", PRESETS)
def test_preset_round_trips_through_json(name):
    model, train = load_preset(name)
    model.validate()
    train.validate(model)
    m_dict, t_dict = model.to_dict(), train.to_dict()
    assert m_dict["version"] == t_dict["version"] == CONFIG_VERSION
    # through real JSON text, where tuples become lists
    m2 = ModelConfig.from_dict(json.loads(json.dumps(m_dict)))
    t2 = TrainConfig.from_dict(json.loads(json.dumps(t_dict)))
    assert m2 == model and t2 == train
    assert isinstance(m2.vision.mean, tuple) and isinstance(t2.betas, tuple)
    assert m2.to_dict() == m_dict


def test_tiny_preset_values():
    model, train = load_preset("tiny")
    assert (model.vision.image_size, model.vision.patch_size) == (64, 8)
    assert model.vision.grid_size == (8, 8) and model.vision.num_patches == 64
    assert model.head.out_dim == 1024 and model.decoder.width == 128
    assert train.steps == 300 and train.block_size == 2 and train.momentum_base == 0.99
    # unset values keep the dataclass defaults
    assert train.keep_ratio == TrainConfig().keep_ratio == 0.5


def test_switched_off_parts_round_trip_as_none():
    model = dataclasses.replace(ModelConfig(), decoder=None, head=None)
    again = ModelConfig.from_dict(json.loads(json.dumps(model.to_dict())))
    assert again.decoder is None and again.head is None
    assert again == model


def test_unknown_keys_are_named():
    with pytest.raises(ConfigError, match="model.vision: colour, wdth"):
        ModelConfig.from_dict({"vision": {"wdth": 3, "colour": 1}})
    with pytest.raises(ConfigError, match="in model: bogus"):
        ModelConfig.from_dict({"bogus": 1})
    with pytest.raises(ConfigError, match="in train: learning_rate"):
        TrainConfig.from_dict({"learning_rate": 1.0})
    with pytest.raises(ConfigError, match="top-level key.*: extra"):
        configs_from_dict({"extra": {}})


def test_config_error_is_a_usage_error():
    assert issubclass(ConfigError, UsageError) and issubclass(ConfigError, ValueError)


def test_newer_version_is_refused():
    data = TrainConfig().to_dict()
    data["version"] = CONFIG_VERSION + 1
    with pytest.raises(ConfigError, match="newer"):
        TrainConfig.from_dict(data)
    data = ModelConfig().to_dict()
    data["version"] = CONFIG_VERSION + 1
    with pytest.raises(ConfigError, match="newer"):
        ModelConfig.from_dict(data)
    # the current version and an unversioned dict are fine
    assert TrainConfig.from_dict({"version": CONFIG_VERSION}) == TrainConfig()
    assert TrainConfig.from_dict({}) == TrainConfig()


@pytest.mark.parametrize("keep_ratio", [0.0, 1.5, -0.1])
def test_validate_rejects_keep_ratio_outside_unit_interval(keep_ratio):
    with pytest.raises(ConfigError, match="keep_ratio"):
        TrainConfig(keep_ratio=keep_ratio).validate()


def test_validate_accepts_keep_ratio_one():
    TrainConfig(keep_ratio=1.0).validate()


def test_validate_rejects_block_size_not_dividing_the_grid():
    model = ModelConfig(vision=VisionConfig(image_size=56, patch_size=8))  # 7x7 grid
    with pytest.raises(ConfigError, match="block_size 2 does not divide the 7x7"):
        TrainConfig(block_size=2).validate(model)
    TrainConfig(block_size=1).validate(model)
    TrainConfig(block_size=7).validate(model)
    # without removal the block size does not matter
    TrainConfig(block_size=2, removal="none").validate(model)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"batch_size": 0}, "batch_size"),
        ({"steps": 0}, "steps"),
        ({"lr": 0.0}, "lr"),
        ({"block_size": 0}, "block_size"),
        ({"removal": "sometimes"}, "removal"),
        ({"score_layer": "first"}, "score_layer"),
    ],
)
def test_validate_rejects_bad_train_values(changes, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig(**changes).validate()


@pytest.mark.parametrize("layer", ["mean", "last", "0", "-1", "11"])
def test_validate_accepts_score_layers(layer):
    TrainConfig(score_layer=layer).validate()


def test_validate_rejects_image_size_not_a_multiple_of_patch_size():
    with pytest.raises(ConfigError, match="image_size 60 is not a multiple of patch_size 8"):
        ModelConfig(vision=VisionConfig(image_size=60, patch_size=8)).validate()


def test_validate_rejects_width_not_divisible_by_heads_and_bad_act():
    with pytest.raises(ConfigError, match="vision width 100"):
        ModelConfig(vision=VisionConfig(width=100, heads=3)).validate()
    with pytest.raises(ConfigError, match="act"):
        ModelConfig(vision=VisionConfig(act="relu")).validate()


def test_configs_from_dict_overlays_a_preset():
    model, train = configs_from_dict(
        {"preset": "tiny", "model": {"vision": {"depth": 2}, "head": None}, "train": {"keep_ratio": 0.25}}
    )
    tiny_model, tiny_train = load_preset("tiny")
    assert model.vision.depth == 2 and model.head is None
    assert model.vision.width == tiny_model.vision.width and model.decoder == tiny_model.decoder
    assert train.keep_ratio == 0.25 and train.steps == tiny_train.steps


def test_load_config_file_errors_name_the_file(tmp_path):
    missing = tmp_path / "nope.json"
    with pytest.raises(ConfigError, match="nope.json"):
        load_config_file(missing)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="bad.json"):
        load_config_file(bad)
    good = tmp_path / "good.json"
    good.write_text(json.dumps({"preset": "tiny", "train": {"steps": 7}}))
    model, train = load_config_file(good)
    assert train.steps == 7 and model == load_preset("tiny")[0]


def test_unknown_preset():
    with pytest.raises(ConfigError, match="huge"):
        load_preset("huge")


# -- the authors' recipe, and documents written before it ----------------------------------------


def test_new_configs_follow_the_authors():
    from detailclip_cli.core.config import IMAGENET_MEAN, IMAGENET_STD

    model, train = ModelConfig(), TrainConfig()
    assert (model.vision.mean, model.vision.std) == (IMAGENET_MEAN, IMAGENET_STD)
    assert (model.decoder.width, model.decoder.depth, model.decoder.heads) == (model.vision.width, 1, 16)
    assert train.freeze_patch_embed and train.weight_decay_policy == "all_matrices"
    assert (train.warmup_start_lr, train.min_lr, train.betas) == (1e-6, 1e-5, (0.9, 0.98))
    assert (train.hflip, train.blur, train.solarize) == (0.0, (0.1, 0.1), (0.2, 0.2))
    assert train.teacher_temp_warmup_steps is None  # one epoch


def test_paper_preset_is_the_authors_vit_b16_recipe():
    model, train = load_preset("paper")
    v, t, d, h = model.vision, model.text, model.decoder, model.head
    assert (v.image_size, v.patch_size, v.width, v.depth, v.heads) == (224, 16, 768, 12, 12)
    assert (t.context_length, t.width, t.layers, t.heads, t.act) == (77, 512, 12, 8, "quick_gelu")
    assert model.embed_dim == 512 and (d.width, d.depth, d.heads, d.mlp_ratio) == (768, 1, 16, 4.0)
    assert (h.out_dim, h.hidden_dim, h.bottleneck_dim, h.layers) == (8192, 2048, 256, 3)
    assert (train.batch_size, train.lr, train.weight_decay, train.betas) == (4096, 5e-4, 0.5, (0.9, 0.98))
    assert train.warmup_steps is None and train.teacher_temp_warmup_steps is None  # one epoch each
    assert (train.keep_ratio, train.block_size, train.score_layer, train.momentum_base) == (0.5, 2, "mean", 0.996)
    # one epoch of 40,960 samples at batch 4096 is 10 steps, for both warm-ups
    fixed = train.with_epoch_length(10)
    assert (fixed.warmup_steps, fixed.teacher_temp_warmup_steps) == (10, 10) and not fixed.epoch_lengths_unset()


def test_presets_say_what_they_are_and_base_is_not_the_papers_batch():
    from importlib import resources

    about = {name: json.loads(resources.files("detailclip_cli.core.presets").joinpath(f"{name}.json").read_text())
             .get("about", "") for name in ("base", "paper")}
    assert "256" in about["base"] and "paper preset" in about["base"]
    assert "4096" in about["paper"]
    assert load_preset("base")[1].batch_size == 256 and load_preset("base")[0].decoder.width == 768


def test_new_configs_count_the_data_only_for_epochs():
    """`--epochs` counts the data once and fixes the one-epoch lengths from that count; without
    it nothing is counted here and those lengths stay None, for `prepare`, which reads the data
    anyway (tests/core/training/test_train.py checks what it fixes them to)."""
    from detailclip_cli.core.training.settings import new_configs

    counted = []

    def count() -> int:
        counted.append(1)
        return 1000

    _, train = new_configs("tiny", None, {"batch_size": 50}, epochs=2, count_samples=count)
    assert (train.steps, train.teacher_temp_warmup_steps, train.warmup_steps) == (40, 20, 30) and counted == [1]
    _, paper = new_configs("paper", None, {"batch_size": 100}, epochs=None,
                           count_samples=lambda: pytest.fail("nothing to count"))
    assert (paper.warmup_steps, paper.teacher_temp_warmup_steps) == (None, None)
    _, paper = new_configs("paper", None, {"batch_size": 100}, epochs=1, count_samples=lambda: 1050)
    assert (paper.steps, paper.warmup_steps, paper.teacher_temp_warmup_steps) == (10, 10, 10)
    _, given = new_configs("tiny", None, {"teacher_temp_warmup_steps": 7}, epochs=None,
                           count_samples=lambda: pytest.fail("nothing to count"))
    assert given.teacher_temp_warmup_steps == 7


def test_version_1_documents_keep_what_version_1_did():
    from detailclip_cli.core.config import CLIP_MEAN, CLIP_STD

    # a model saved by version 1 always carried its statistics; one without them meant CLIP's
    old_model = {"version": 1, "vision": {"width": 48, "heads": 3}, "decoder": {"depth": 1}}
    m = ModelConfig.from_dict(old_model)
    assert (m.vision.mean, m.vision.std, m.decoder.width) == (CLIP_MEAN, CLIP_STD, 512)
    old_train = {"version": 1, "steps": 1500, "teacher_temp_warmup_frac": 0.3, "min_lr": 0.0}
    t = TrainConfig.from_dict(old_train)
    assert t.teacher_temp_warmup_steps == 450 and not t.freeze_patch_embed
    assert (t.warmup_start_lr, t.min_lr, t.weight_decay_policy) == (None, 0.0, "skip_embeddings")
    assert (t.hflip, t.blur, t.solarize) == (0.5, (1.0, 0.1), (0.0, 0.2))
    # what a document says wins over the version 1 values
    assert TrainConfig.from_dict({"version": 1, "freeze_patch_embed": True}).freeze_patch_embed


def test_version_1_documents_load_with_the_settings_they_were_trained_with():
    """0.1's shipped model (its config.json and run.json, kept in tests/data) reads back with
    version 1's values for every setting version 2 added; today's shipped model has version 2's."""
    from importlib import resources
    from pathlib import Path

    from detailclip_cli.core.config import CLIP_MEAN

    old = Path(__file__).resolve().parents[1] / "data" / "v1-shipped-model"
    model = ModelConfig.from_dict(json.loads((old / "config.json").read_text()))
    assert model.vision.mean == CLIP_MEAN and model.text.act == "gelu" and model.decoder.width == 128
    train = TrainConfig.from_dict(json.loads((old / "run.json").read_text())["train"])
    assert not train.freeze_patch_embed and train.min_lr == 0.0 and train.weight_decay_policy == "skip_embeddings"

    from detailclip_cli.core.store.io import read_model_config

    folder = resources.files("detailclip_cli.core.store.shipped").joinpath("detailclip-tiny")
    model = read_model_config(Path(str(folder)))  # config.json also holds the weights' checksum
    assert model.vision.mean == (0.485, 0.456, 0.406)  # ImageNet's, the authors' statistics
    train = TrainConfig.from_dict(json.loads(folder.joinpath("run.json").read_text())["train"])
    assert train.freeze_patch_embed and train.min_lr == 1e-5 and train.weight_decay_policy == "all_matrices"


@pytest.mark.parametrize("changes, message", [
    ({"teacher_temp_warmup_steps": -1}, "teacher_temp_warmup_steps"),
    ({"weight_decay_policy": "some"}, "weight_decay_policy"),
    ({"blur": (1.5, 0.1)}, "blur"),
    ({"hflip": -0.1}, "hflip"),
])
def test_validate_rejects_bad_recipe_values(changes, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig(**changes).validate()
