"""Shared fixtures. The demo data and the corpus of broken files are generated once per session."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="session")
def demo_cache(tmp_path_factory):
    """Point DETAILCLIP_CACHE at a session folder holding the generated demo set."""
    from detailclip_cli.core.data import demo_root

    cache = tmp_path_factory.mktemp("cache")
    old = os.environ.get("DETAILCLIP_CACHE")
    os.environ["DETAILCLIP_CACHE"] = str(cache)
    demo_root()
    yield cache
    if old is None:
        os.environ.pop("DETAILCLIP_CACHE", None)
    else:
        os.environ["DETAILCLIP_CACHE"] = old


@pytest.fixture(scope="session")
def run_dir(demo_cache, tmp_path_factory):
    """A 4-step pretraining run of the tiny preset, shrunk (depth 2, batch 8)."""
    from detailclip_cli.core.config import TrainConfig, load_preset
    from detailclip_cli.core.training.pretrain import train

    model_cfg, train_cfg = load_preset("tiny")
    model_cfg.vision.depth = 2
    model_cfg.head.out_dim = 256
    train_cfg = TrainConfig.from_dict({**train_cfg.to_dict(), "batch_size": 8, "steps": 4, "warmup_steps": 1,
                                       "log_every": 4, "save_every": 4})
    out = tmp_path_factory.mktemp("run")
    list(train(model_cfg, train_cfg, data="demo", out_dir=out, device="cpu"))
    return out


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    """Good and broken image files of every kind (``helpers.build_corpus``), read by data and command tests."""
    from helpers import build_corpus

    return build_corpus(tmp_path_factory.mktemp("corpus"))
