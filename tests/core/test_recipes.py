"""Recipes (``core/recipes``): each one's exact switches on the configs, and the precedence
preset < recipe < config file < explicit options."""

from __future__ import annotations

import json
from importlib import resources

import pytest

from detailclip_cli.core.config import PRESETS, ConfigError, configs_from_dict, load_preset
from detailclip_cli.core.recipes import DEFAULT_RECIPE, RECIPES, all_recipes, load_recipe
from detailclip_cli.core.training.settings import new_configs, overrides

# What each recipe switches, on the tiny preset (keep ratio 0.5 and block 2 are the preset's
# where the recipe leaves them): removal, kept fraction, block, decoder, head, SimCLR term, and
# the weights of the terms it has.
EXPECTED = {
    "detailclip": dict(removal="attention", keep_ratio=0.5, block_size=2, decoder=True, head=True, simclr_term=False,
                       w_clip=1.0, w_rec=1.0, w_cls=1.0, w_patch=1.0),
    "clip": dict(removal="none", keep_ratio=1.0, block_size=2, decoder=False, head=False, simclr_term=False,
                 w_clip=1.0),
    "flip": dict(removal="random", keep_ratio=0.5, block_size=1, decoder=False, head=False, simclr_term=False,
                 w_clip=1.0),
    "slip": dict(removal="none", keep_ratio=1.0, block_size=2, decoder=False, head=False, simclr_term=True,
                 w_clip=1.0, ssl_temp=0.1),
    "a-clip-like": dict(removal="attention", keep_ratio=0.5, block_size=2, decoder=False, head=True,
                        simclr_term=False, w_clip=1.0, w_cls=1.0, w_patch=0.0),
    "maskclip-like": dict(removal="random", keep_ratio=0.5, block_size=2, decoder=True, head=True,
                          simclr_term=False, w_clip=1.0, w_rec=0.0, w_cls=0.0, w_patch=1.0),
}


def _switches(model, train, names) -> dict:
    parts = {"decoder": model.decoder is not None, "head": model.head is not None}
    return {k: parts[k] if k in parts else getattr(train, k) for k in names}


def test_the_listed_recipes_are_the_files_there_are():
    files = {p.name[:-len(".json")] for p in resources.files("detailclip_cli.core.recipes").iterdir()
             if p.name.endswith(".json")}
    assert set(RECIPES) == files and len(RECIPES) == len(files)
    assert DEFAULT_RECIPE == RECIPES[0] == "detailclip"
    assert set(EXPECTED) == set(RECIPES)


@pytest.mark.parametrize("name", RECIPES)
def test_each_recipe_sets_exactly_its_switches(name):
    model, train = new_configs("tiny", None, {}, epochs=None, count_samples=lambda: 0, recipe=name)
    assert _switches(model, train, EXPECTED[name]) == EXPECTED[name]
    # The size is the preset's: the towers, and the decoder and head where the recipe keeps them.
    tiny_model, tiny_train = load_preset("tiny")
    assert (model.vision, model.text, model.embed_dim) == (tiny_model.vision, tiny_model.text, tiny_model.embed_dim)
    assert model.decoder in (None, tiny_model.decoder) and model.head in (None, tiny_model.head)
    assert (train.steps, train.batch_size, train.lr) == (tiny_train.steps, tiny_train.batch_size, tiny_train.lr)
    train.validate(model)


def test_every_recipe_has_one_line_and_a_reference():
    for recipe in all_recipes():
        assert recipe.summary and "\n" not in recipe.summary and recipe.reference
        assert set(recipe.overlay()) == {"model", "train"}


def test_the_default_recipe_is_the_tiny_preset_as_it_is():
    """``detailclip`` only restates the method the presets already describe."""
    for preset in PRESETS:
        assert configs_from_dict({"preset": preset}, recipe=load_recipe("detailclip").overlay()) == load_preset(preset)


def test_precedence_preset_recipe_config_file_options(tmp_path):
    # An explicit option beats the recipe.
    _, train = new_configs("tiny", None, overrides(keep_ratio=0.25), epochs=None, count_samples=lambda: 0,
                           recipe="flip")
    assert (train.removal, train.keep_ratio, train.block_size) == ("random", 0.25, 1)
    # A config file's own values beat the recipe; what the file leaves is the recipe's, then its preset's.
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"preset": "tiny", "model": {"decoder": {"width": 64}},
                                "train": {"block_size": 2, "steps": 7}}))
    model, train = new_configs(None, path, {}, epochs=None, count_samples=lambda: 0, recipe="flip")
    assert (train.removal, train.keep_ratio, train.block_size, train.steps) == ("random", 0.5, 2, 7)
    assert model.decoder is not None and model.decoder.width == 64 and model.head is None
    # ... and an option beats the file.
    _, train = new_configs(None, path, overrides(steps=9), epochs=None, count_samples=lambda: 0, recipe="flip")
    assert train.steps == 9
    # Without a recipe (distill, a notebook) the preset's method stays as it is.
    model, train = new_configs("tiny", None, {}, epochs=None, count_samples=lambda: 0)
    assert _switches(model, train, EXPECTED["detailclip"]) == _switches(*load_preset("tiny"), EXPECTED["detailclip"])


def test_a_recipe_overlay_sits_between_a_document_and_its_preset():
    model, train = configs_from_dict({"preset": "tiny", "train": {"w_clip": 2.0}}, recipe=load_recipe("clip").overlay())
    assert (model.decoder, model.head, train.removal, train.w_clip) == (None, None, "none", 2.0)


def test_an_unknown_recipe_names_the_recipes():
    with pytest.raises(ConfigError) as info:
        new_configs("tiny", None, {}, epochs=None, count_samples=lambda: 0, recipe="mae")
    assert str(info.value) == ("unknown recipe 'mae' (choose from detailclip, clip, flip, slip, a-clip-like, "
                               "maskclip-like, or list to describe them)")
