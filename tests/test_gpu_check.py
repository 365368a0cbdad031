"""examples/gpu_check.sh, the GPU check of issue 17, runs end to end on the CPU at tiny sizes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "examples" / "gpu_check.sh"


@pytest.mark.slow
def test_gpu_check_writes_one_json_on_the_cpu(demo_cache, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHON": sys.executable}
    result = subprocess.run(["bash", str(SCRIPT), "--device", "cpu", "--tiny", "--out", str(tmp_path)],
                            capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads((tmp_path / "gpu_check.json").read_text())
    tiny = record["presets"]["tiny"]
    assert record["device"] == "cpu" and tiny["bench"]["preset"] == "tiny"
    assert {"train", "flops", "memory"} <= tiny["bench"].keys()
    assert tiny["images_per_sec"]["no-compile"] > 0 and tiny["images_per_sec"]["compile"] is None
    # The torchrun run joined a process group of one (DDP; NCCL on a GPU).
    assert tiny["torchrun_processes"] == 1 and tiny["torchrun_images_per_sec"] > 0


def test_gpu_check_refuses_an_unknown_option(tmp_path):
    result = subprocess.run(["bash", str(SCRIPT), "--gpus", "8"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 2 and result.stderr.strip() == "error: unknown option --gpus (use --device NAME, --out DIR, --tiny)"
