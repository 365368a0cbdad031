"""Shared fixtures. The demo data is generated once per session into a temporary cache."""

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
