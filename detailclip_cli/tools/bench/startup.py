"""The ``startup`` section: wall time of fresh processes, each command against ``import torch``.

``detailclip --help`` and each model-using command on one image (:data:`STARTUP_COMMANDS`)
run in rounds with ``python -c "import torch"`` and ``python -c "pass"``, one of each per
round, so each command's ratio to (and its seconds beyond) ``import torch`` compares runs
seconds apart.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

from detailclip_cli.tools.bench.figures import median, per_round
from detailclip_cli.tools.bench.session import Session
from detailclip_cli.tools.costs import interleaved_runs, round_sig, spread

# The model-using commands timed on one image: name -> arguments after `detailclip` ({image}, {out}).
STARTUP_COMMANDS = {
    "zero_shot": ["zero-shot", "{image}", "--labels", "dog,cat"],
    "attn_map": ["attn-map", "{image}", "--out", "{out}/attn"],
    "reconstruct": ["reconstruct", "{image}", "--out", "{out}/reconstruct"],
    "embed": ["embed", "{image}"],
}


def startup_seconds(image: Path, out: Path, *, repeats: int, warmup: int = 1) -> dict:
    """Wall time of fresh processes: ``python -c "import torch"``, ``detailclip --help``, and each of
    :data:`STARTUP_COMMANDS` on ``image`` with the shipped model (outputs under ``out``).

    The commands run in rounds, one of each per round, so each command's ratio to (and its
    seconds beyond) ``import torch`` compares runs seconds apart.

    Returns:
        ``<name>_s`` (median seconds) for ``import_torch``, ``python``, ``help`` and each command;
        ``help_vs_import_torch``; per command ``<name>_vs_import_torch`` and ``<name>_extra_s``
        (medians of the per-round ratio and difference); ``spread`` of all of them.
    """
    exe = Path(sys.executable)
    script = exe.parent / "detailclip"
    cli = [str(script)] if script.exists() else [str(exe), "-m", "detailclip_cli"]
    commands = {"import_torch": [str(exe), "-c", "import torch"], "python": [str(exe), "-c", "pass"],
                "help": [*cli, "--help"]}
    for name, args in STARTUP_COMMANDS.items():
        commands[name] = [*cli, *(a.format(image=image, out=out) for a in args)]

    def run(cmd: list[str]) -> None:
        result = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if result.returncode != 0:
            last = (result.stderr.strip().splitlines() or ["no output"])[-1]
            raise RuntimeError(f"{' '.join(cmd[-4:])} failed while timing start-up: {last}")

    r = interleaved_runs({name: (lambda c=cmd: run(c)) for name, cmd in commands.items()},
                         repeats=repeats, warmup=warmup, device=torch.device("cpu"))
    torch_s = r["import_torch"]
    out_record: dict[str, Any] = {f"{name}_s": round_sig(median(times)) for name, times in r.items()}
    spreads = {f"{name}_s": spread(times) for name, times in r.items()}
    for name in ("help", *STARTUP_COMMANDS):
        ratio = per_round(lambda c, t: c / t, r[name], torch_s)
        out_record[f"{name}_vs_import_torch"] = round_sig(median(ratio))
        spreads[f"{name}_vs_import_torch"] = spread(ratio)
        if name != "help":
            extra = per_round(lambda c, t: c - t, r[name], torch_s)
            out_record[f"{name}_extra_s"] = round_sig(median(extra))
            spreads[f"{name}_extra_s"] = spread(extra)
    out_record["spread"] = spreads
    return out_record


def startup(session: Session) -> dict:
    """:func:`startup_seconds` on one generated demo image, outputs in the run's scratch folder."""
    session.on_stage("start-up time of each command")
    image = session.images(1)[0]
    return startup_seconds(image, session.scratch / "startup", repeats=session.cfg.repeats,
                           warmup=session.cfg.warmup)
