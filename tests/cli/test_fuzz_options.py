"""Property test: any values of any command's options give exit code 0, 1 or 2, at most one
``error:`` line, and never a traceback (issue 19).

Commands run in-process through the console entry point (``cli.main``). ``pretrain`` and
``distill`` stop where their training would start (their ``run`` and ``report_dry_run`` are
replaced by a no-op), after every check of their settings, so a case costs milliseconds; the
commands that use a model (``zero-shot``, ``attn-map``, ``reconstruct``, ``info``) and ``plot``
run for real on the shipped model and one small image. The number of cases is bounded
(``CASES``) so the test takes well under a minute on 2 cores.
"""

from __future__ import annotations

import json
import os
import string
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from detailclip_cli.cli import distill as distill_cmd
from detailclip_cli.cli import main
from detailclip_cli.cli import pretrain as pretrain_cmd

CASES = 150

INTS = st.one_of(st.integers(-3, 40), st.sampled_from([0, -1, 2**31, 2**32, 10**25, -(10**25)]))
FLOATS = st.one_of(st.floats(allow_nan=True, allow_infinity=True, width=32),
                   st.sampled_from([0.0, -1.0, 0.25, 0.5, 1.0, 1.5, 1e300]))
WORDS = st.one_of(st.sampled_from(["", "x", "mean", "last", "-1", "3", "99", "attention", "random", "none", "fp16",
                                   "bf16", "tiny", "small", "nan", "cpu", "auto", "cuda:7", "dino", "byol", "list",
                                   "clip", "open_clip:nope"]),
                  st.text(string.ascii_letters + string.digits + "-_:.,/ ", max_size=6))

# Per command: options with the kind of value each takes ("flag": no value).
TRAINING = {
    "--steps": INTS, "--epochs": FLOATS, "--batch-size": INTS, "--lr": FLOATS, "--weight-decay": FLOATS,
    "--warmup-steps": INTS, "--seed": INTS, "--removal": WORDS, "--keep-ratio": FLOATS, "--block-size": INTS,
    "--score-layer": WORDS, "--w-rec": FLOATS, "--w-patch": FLOATS, "--w-cls": FLOATS, "--precision": WORDS,
    "--accum-steps": INTS, "--log-every": INTS, "--save-every": INTS, "--max-bad-fraction": FLOATS,
    "--workers": INTS, "--device": WORDS, "--no-reconstruct": "flag", "--compile": "flag", "--force": "flag",
    "--samples-per-epoch": INTS,
}
COMMANDS = {
    "pretrain": {**TRAINING, "--preset": WORDS, "--recipe": WORDS, "--w-clip": FLOATS, "--no-distill": "flag",
                 "--lock-text": "flag", "--init": WORDS},
    "distill": {**TRAINING, "--student": WORDS, "--method": WORDS, "--local-crops": INTS, "--local-size": INTS,
                "--reconstruct": "flag"},
    "zero-shot": {"--labels": WORDS, "--top-k": INTS, "--templates": WORDS, "--format": WORDS,
                  "--batch-size": INTS, "--device": WORDS, "--no-verify": "flag"},
    "attn-map": {"--layer": WORDS, "--heads": WORDS, "--keep-ratio": FLOATS, "--block-size": INTS,
                 "--format": WORDS, "--batch-size": INTS, "--device": WORDS},
    "reconstruct": {"--removal": WORDS, "--keep-ratio": FLOATS, "--block-size": INTS, "--layer": WORDS,
                    "--seed": INTS, "--format": WORDS, "--batch-size": INTS, "--device": WORDS},
    "info": {"--format": WORDS, "--pretrained": WORDS, "--no-verify": "flag"},
    "plot": {"--keys": WORDS},
}


@st.composite
def invocations(draw):
    """A command and a random subset of its options with random values (at most 4 options)."""
    command = draw(st.sampled_from(sorted(COMMANDS)))
    table = COMMANDS[command]
    names = draw(st.lists(st.sampled_from(sorted(table)), max_size=4, unique=True))
    args = []
    for name in names:
        kind = table[name]
        args += [name] if kind == "flag" else [name, str(draw(kind))]
    return command, args


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz")
    image = root / "a.png"
    Image.new("RGB", (40, 30), (200, 30, 30)).save(image)
    metrics = root / "metrics.jsonl"
    metrics.write_text("".join(json.dumps({"step": s, "loss": 3.0 - s / 10}) + "\n" for s in (1, 2, 3)))
    return {"root": root, "image": image, "metrics": metrics}


@pytest.mark.slow
@settings(max_examples=CASES, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(case=invocations())
def test_any_option_values_give_a_clean_exit(files, demo_cache, monkeypatch, capsys, case):
    command, args = case
    monkeypatch.setattr(pretrain_cmd, "run", lambda *a, **k: None)  # stop where training would start
    monkeypatch.setattr(pretrain_cmd, "report_dry_run", lambda *a, **k: None)
    monkeypatch.setattr(distill_cmd, "run", lambda *a, **k: None)
    root = files["root"]
    inputs = {
        "pretrain": ["--out", str(root / "runs" / "p")], "distill": ["--out", str(root / "runs" / "d")],
        "zero-shot": [str(files["image"])] + ([] if "--labels" in args else ["--labels", "a,b"]),
        "attn-map": [str(files["image"]), "--out", str(root / "maps")],
        "reconstruct": [str(files["image"]), "--out", str(root / "recon")],
        "info": [], "plot": [str(files["metrics"]), "--out", str(root / "c.png")],
    }[command]
    # The training commands refuse an --out with files; --force is one of the fuzzed options.
    monkeypatch.setattr(sys, "argv", ["detailclip", command, *inputs, *args])
    with pytest.raises(SystemExit) as info:
        main()
    err = capsys.readouterr().err
    if os.environ.get("DETAILCLIP_FUZZ_LOG"):  # for the figures in docs/reliability.md: one line per case
        with open(os.environ["DETAILCLIP_FUZZ_LOG"], "a") as log:
            log.write(json.dumps({"command": command, "args": args, "code": info.value.code}) + "\n")
    assert info.value.code in (0, 1, 2), (command, args, err)
    assert "Traceback" not in err, (command, args, err)
    assert sum(line.startswith("error:") for line in err.splitlines()) <= 1, (command, args, err)
