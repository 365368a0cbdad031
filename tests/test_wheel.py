"""The wheel is the product: built with ``pip wheel``, installed into a fresh venv, it runs outside
the repository with its shipped model (package data), nothing borrowed from the checkout."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from PIL import Image

import detailclip_cli

REPO = Path(__file__).resolve().parents[1]


def _run(args: list, *, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    # No PYTHONPATH: the repository must not leak into the fresh interpreter.
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env["OMP_NUM_THREADS"] = "1"
    return subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def fresh_python(tmp_path_factory) -> Path:
    """A fresh venv's interpreter with the built wheel installed and the dependencies importable.

    The dependencies come from this venv's site-packages through a ``.pth`` line; ``.pth`` files
    inside that folder are not processed, so this venv's editable install of the repository
    stays out of the fresh one.
    """
    tmp = tmp_path_factory.mktemp("wheel")
    # Build from a copy of what the wheel is made of, so the build neither writes build/ or
    # egg-info into the checkout nor picks up stale files another build left there.
    source = tmp / "source"
    shutil.copytree(REPO / "detailclip_cli", source / "detailclip_cli",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(REPO / name, source / name)
    dist = tmp / "dist"
    built = _run([sys.executable, "-m", "pip", "wheel", source, "--no-deps", "--no-build-isolation",
                  "--disable-pip-version-check", "-q", "-w", dist], cwd=tmp)
    assert built.returncode == 0, built.stderr
    (wheel,) = dist.glob("detailclip-*.whl")
    assert wheel.name.startswith(f"detailclip-{detailclip_cli.__version__}-")

    venv = tmp / "fresh"
    made = _run([sys.executable, "-m", "venv", "--without-pip", venv], cwd=tmp)
    assert made.returncode == 0, made.stderr
    python = venv / "bin" / "python"
    site = Path(_run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                     cwd=tmp).stdout.strip())
    (site / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    installed = _run([sys.executable, "-m", "pip", "install", "--no-deps", "--disable-pip-version-check", "-q",
                      "--target", site, wheel], cwd=tmp)
    assert installed.returncode == 0, installed.stderr
    return python


@pytest.mark.slow
def test_the_installed_wheel_runs_outside_the_repository(fresh_python, tmp_path):
    work = tmp_path / "elsewhere"
    work.mkdir()
    Image.effect_noise((80, 60), 64).convert("RGB").save(work / "noise.png")

    where = _run([fresh_python, "-c", "import detailclip_cli; print(detailclip_cli.__file__)"], cwd=work)
    assert where.returncode == 0, where.stderr
    module = Path(where.stdout.strip()).resolve()
    assert module.is_relative_to(fresh_python.parent.parent.resolve()), module
    assert not module.is_relative_to(REPO), module

    version = _run([fresh_python, "-m", "detailclip_cli", "--version"], cwd=work)
    assert version.returncode == 0 and version.stdout.strip() == f"detailclip {detailclip_cli.__version__}"

    # No --model: the shipped model, read from the installed package.
    result = _run([fresh_python, "-m", "detailclip_cli", "zero-shot", "noise.png", "--labels", "a dog,a cat",
                   "--device", "cpu"], cwd=work)
    assert result.returncode == 0, result.stderr
    assert "a dog" in result.stdout and "a cat" in result.stdout, result.stdout
