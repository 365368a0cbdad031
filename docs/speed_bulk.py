"""Bulk zero-shot (or embed) images/s, this tree against an older revision, whole commands in rounds.

Issue 18's target: ``detailclip zero-shot`` over 5,000 demo-sized images at least 1.5x the
images/s of the tree before the issue (``bac5301``). Each round runs, for each tree, the whole
command twice in fresh processes, once over all N images and once over the first image alone,
with the same model (``--model``, the shipped one of this tree) and labels; a tree's images/s is
``(N - 1) / (t_N - t_1)``, so start-up and the text classifier cancel. Ratios are taken round
by round; medians and ranges over the rounds are printed, and one JSON line per round goes to
``--log``. ``--variant NAME=ARGS`` (repeatable) adds this tree run with extra options, e.g.
``--variant "w1=--workers 1"``.

    .venv/bin/python docs/speed_bulk.py --images 5000 --rounds 4
    OMP_NUM_THREADS=1 .venv/bin/python docs/speed_bulk.py --images 5000 --rounds 4
    .venv/bin/python docs/speed_bulk.py --images 5000 --rounds 3 --command embed --before 75cde3e

Run it on a quiet machine: anything else on the cores changes the figures more than the code.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LABELS = "striped,dotted,checkered,plain"  # the demo's classes


def checkout(rev: str, dest: Path) -> Path:
    """The tree of ``rev`` (``git archive``) under ``dest``."""
    dest.mkdir(parents=True, exist_ok=True)
    archive = dest / "tree.tar"
    with archive.open("wb") as f:
        subprocess.run(["git", "-C", str(ROOT), "archive", rev], stdout=f, check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(dest / "tree", filter="data")
    return dest / "tree"


def images(folder: Path, count: int) -> list[Path]:
    """The first ``count`` demo validation images as PNG files, in generation order."""
    sys.path.insert(0, str(ROOT))
    from detailclip_cli.tools.bench.session import demo_images

    return demo_images(folder, count)


def timed(tree: Path, listing: Path, model: Path, extra: list[str], command: str = "zero-shot") -> float:
    """Seconds of one ``zero-shot`` (or ``embed``, into a fresh ``.npy`` file) command over the
    paths listed in ``listing`` (read from stdin)."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    if command == "embed":
        out = listing.with_name(f"{listing.stem}-{time.monotonic_ns()}.npy")
        cmd = [sys.executable, "-m", "detailclip_cli", "embed", "-", "--model", str(model), "--output", str(out), *extra]
    else:
        cmd = [sys.executable, "-m", "detailclip_cli", "zero-shot", "-", "--labels", LABELS, "--model", str(model),
               "--format", "jsonl", *extra]
    start = time.perf_counter()
    with listing.open() as stdin:
        subprocess.run(cmd, stdin=stdin, stdout=subprocess.DEVNULL, env=env, check=True, cwd=tree)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--before", default="bac5301", help="the revision to compare with")
    parser.add_argument("--log", type=Path, default=None, help="append one JSON line per round here")
    parser.add_argument("--command", choices=["zero-shot", "embed"], default="zero-shot",
                        help="the command timed: zero-shot (JSON lines to nowhere) or embed (into an .npy file)")
    parser.add_argument("--variant", action="append", default=[], metavar="NAME=ARGS",
                        help="this tree with extra zero-shot options, e.g. 'w1=--workers 1'")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="speed-bulk-") as tmp:  # the trees and images go with it
        work = Path(tmp)
        trees = {"before": (checkout(args.before, work / "before"), []), "now": (ROOT, [])}
        for spec in args.variant:
            name, _, extra = spec.partition("=")
            trees[name] = (ROOT, extra.split())
        paths = images(work / "images", args.images)
        model = ROOT / "detailclip_cli/core/store/shipped/detailclip-tiny"
        all_list, one_list = work / "all.txt", work / "one.txt"
        all_list.write_text("".join(f"{p}\n" for p in paths))
        one_list.write_text(f"{paths[0]}\n")
        for tree, extra in trees.values():  # warm the file cache and the byte-code of both trees
            timed(tree, one_list, model, extra, args.command)

        rates: dict[str, list[float]] = {name: [] for name in trees}
        for r in range(args.rounds):
            row = {}
            for name, (tree, extra) in trees.items():
                t_all = timed(tree, all_list, model, extra, args.command)
                t_one = timed(tree, one_list, model, extra, args.command)
                rates[name].append((args.images - 1) / (t_all - t_one))
                row[name] = {"t_all_s": round(t_all, 3), "t_one_s": round(t_one, 3),
                             "images_per_s": round(rates[name][-1], 1)}
            for name in trees:
                if name != "before":
                    row[f"{name}_vs_before"] = round(rates[name][-1] / rates["before"][-1], 3)
            row.update(round=r, command=args.command, images=args.images,
                       threads=os.environ.get("OMP_NUM_THREADS", "default"),
                       load=os.getloadavg()[0])
            print(json.dumps(row), flush=True)
            if args.log:
                with args.log.open("a") as f:
                    f.write(json.dumps(row) + "\n")

        for name, values in rates.items():
            line = f"{name}: {statistics.median(values):.0f} images/s (rounds {min(values):.0f} to {max(values):.0f})"
            if name != "before":
                ratios = [n / b for n, b in zip(values, rates["before"])]
                line += f"; / before: {statistics.median(ratios):.2f} (rounds {min(ratios):.2f} to {max(ratios):.2f})"
            print(line)


if __name__ == "__main__":
    main()
