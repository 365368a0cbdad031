"""Experiment 2: the self-supervision questions, image-only, on the demo data.

Four objectives the method builds on, each trained by ``detailclip distill --method NAME``
without a teacher (no captions), then read by ``detailclip evaluate --task probe`` (k-NN top-1
of the [CLS] embedding on the validation split, k = 20, T = 0.07, from the train split's
embeddings):

- ``simclr``: NT-Xent, negatives from the batch;
- ``byol``: online predictor + EMA target, cosine loss, no negatives;
- ``dino``: [CLS] self-distillation with a centred, sharpened EMA teacher and local crops;
- ``ibot``: DINO + masked patch self-distillation.

Questions, one group of runs each:

- ``batch``: k-NN accuracy against batch size at the same number of images seen (SimCLR needs
  negatives, so small batches should hurt it most);
- ``augment``: with colour jitter (and grey views) or cropping removed;
- ``local``: DINO and iBOT with and without local crops;
- ``collapse``: DINO as it is, without centring (``center_momentum`` 1: the centre stays 0)
  and without an EMA teacher (momentum 0: the teacher is the student), with the collapse
  signals logged over training (``spread`` of the student's embeddings, teacher entropy).

Writes under ``--out``: ``runs.jsonl`` (one record per run, appended as it finishes; runs
already there are skipped, so an interrupted experiment continues), ``results.md`` (tables)
and ``collapse.png`` / ``batch.png``. One command::

    .venv/bin/python examples/experiment_selfsup.py --out docs/experiments/selfsup

``--device cuda --preset small`` runs the same on a GPU.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

METHODS = ("simclr", "byol", "dino", "ibot")
GROUPS = ("batch", "augment", "local", "collapse")


def plan(images: int, batches: list[int], base_batch: int) -> list[dict]:
    """Every run of the experiment: its group, method, batch, steps and config overrides."""
    runs = []
    for method in METHODS:
        for batch in batches:
            runs.append({"group": "batch", "method": method, "batch_size": batch, "steps": images // batch,
                         "variant": "default", "train": {}})
    for method in METHODS:
        for variant, train in (("no colour", {"color_jitter": 0.0, "grayscale": 0.0}),
                               ("no crop", {"crop_scale": [1.0, 1.0]})):
            runs.append({"group": "augment", "method": method, "batch_size": base_batch,
                         "steps": images // base_batch, "variant": variant, "train": train})
    for method in ("dino", "ibot"):
        runs.append({"group": "local", "method": method, "batch_size": base_batch, "steps": images // base_batch,
                     "variant": "no local crops", "train": {}, "local_crops": 0})
    for variant, train in (("no centring", {"center_momentum": 1.0}),
                           ("no EMA", {"momentum_base": 0.0, "momentum_final": 0.0})):
        runs.append({"group": "collapse", "method": "dino", "batch_size": base_batch, "steps": images // base_batch,
                     "variant": variant, "train": train})
    return runs


def run_key(run: dict) -> str:
    return f"{run['method']}-b{run['batch_size']}-{run['variant'].replace(' ', '_')}"


def execute(run: dict, *, preset: str, data: str, seed: int, device: str, work: Path) -> dict:
    """Train one run with ``detailclip distill`` and read its k-NN accuracy with ``detailclip evaluate``."""
    out = work / f"{run_key(run)}-s{seed}"
    log_every = max(1, run["steps"] // 25)
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump({"preset": preset, "train": {**run["train"], "log_every": log_every}}, f)
        config = f.name
    cmd = [sys.executable, "-m", "detailclip_cli", "distill", "--method", run["method"], "--config", config,
           "--data", data, "--batch-size", str(run["batch_size"]), "--steps", str(run["steps"]),
           "--save-every", str(run["steps"]), "--seed", str(seed), "--device", device, "--out", str(out), "--force"]
    if "local_crops" in run:
        cmd += ["--local-crops", str(run["local_crops"])]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    seconds = time.perf_counter() - t0
    Path(config).unlink()
    evaluation = subprocess.run(
        [sys.executable, "-m", "detailclip_cli", "evaluate", "--model", str(out), "--data", data, "--task", "probe",
         "--device", device, "--format", "json"], check=True, capture_output=True, text=True)
    probe = json.loads(evaluation.stdout)["metrics"]["probe"]
    curve = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    signals = [{k: row.get(k) for k in ("step", "loss", "spread", "teacher_entropy")} for row in curve]
    return {**run, "seed": seed, "preset": preset, "data": data, "knn_top1": probe["knn"]["top1"],
            "logistic_top1": probe.get("logistic", {}).get("top1"), "seconds": round(seconds, 1),
            "curve": signals}


def summarise(records: list[dict], out: Path, *, images: int, base_batch: int) -> None:
    wall = sum(r["seconds"] for r in records)
    lines = [f"k-NN top-1 of the [CLS] embedding on the validation split (k = 20, T = 0.07); "
             f"{images} images seen per run; one seed per run unless n says otherwise. "
             f"{len(records)} runs, {wall / 60:.0f} minutes of training and evaluation in all.", ""]
    batches = sorted({r["batch_size"] for r in records if r["group"] == "batch"})
    lines += ["**Batch size** (same images seen)", "",
              "| method | " + " | ".join(f"batch {b}" for b in batches) + " |", "|---|" + "---|" * len(batches)]
    for method in METHODS:
        cells = []
        for b in batches:
            found = [r["knn_top1"] for r in records if r["group"] == "batch" and r["method"] == method
                     and r["batch_size"] == b]
            cells.append(f"{sum(found) / len(found):.3f}" if found else "")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    for group, title in (("augment", "Augmentation removed"), ("local", "Local crops"), ("collapse", "Collapse")):
        rows = [r for r in records if r["group"] == group]
        if not rows:
            continue
        lines += ["", f"**{title}**", "",
                  "| method | variant | batch | k-NN top-1 | final spread | final teacher entropy | minutes |",
                  "|---|---|---|---|---|---|---|"]
        for r in rows:
            last = r["curve"][-1] if r["curve"] else {}
            spread, ent = last.get("spread"), last.get("teacher_entropy")
            lines.append(f"| {r['method']} | {r['variant']} | {r['batch_size']} | {r['knn_top1']:.3f} | "
                         f"{'' if spread is None else f'{spread:.4f}'} | {'' if ent is None else f'{ent:.3f}'} | "
                         f"{r['seconds'] / 60:.1f} |")
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))

    from matplotlib.figure import Figure

    fig = Figure(figsize=(5, 3.4), layout="constrained")
    ax = fig.subplots()
    for method in METHODS:
        pts = sorted((r["batch_size"], r["knn_top1"]) for r in records if r["group"] == "batch" and r["method"] == method)
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=method)
    if ax.lines:  # the batch group ran
        ax.set_xscale("log", base=2)
        ax.set_xlabel("batch size (same images seen)")
        ax.set_ylabel("k-NN top-1")
        ax.legend(fontsize=8)
        fig.savefig(out / "batch.png", dpi=110)

    dino = [r for r in records if r["method"] == "dino" and r["batch_size"] == base_batch
            and r["group"] in ("batch", "collapse") and r["variant"] in ("default", "no centring", "no EMA")]
    if dino:
        fig = Figure(figsize=(9, 3.4), layout="constrained")
        axes = fig.subplots(1, 2)
        for r in dino:
            steps = [c["step"] for c in r["curve"]]
            axes[0].plot(steps, [c["spread"] for c in r["curve"]], label=r["variant"])
            axes[1].plot(steps, [c["teacher_entropy"] for c in r["curve"]], label=r["variant"])
        axes[0].set_title("student embedding spread", fontsize=10)
        axes[1].set_title("teacher entropy (nats)", fontsize=10)
        for ax in axes:
            ax.set_xlabel("step")
            ax.legend(fontsize=8)
        fig.savefig(out / "collapse.png", dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("docs/experiments/selfsup"))
    parser.add_argument("--data", default="demo")
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--images", type=int, default=9600, help="images seen per run (steps = images / batch)")
    parser.add_argument("--batches", default="8,32,128", help="batch sizes of the batch group")
    parser.add_argument("--batch-size", type=int, default=32, help="batch of the other groups")
    parser.add_argument("--groups", default=",".join(GROUPS))
    parser.add_argument("--methods", default=",".join(METHODS), help="the batch and augment groups' methods")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--work", type=Path, default=Path("runs/experiment-selfsup"))
    args = parser.parse_args()
    groups = args.groups.split(",")
    if set(groups) - set(GROUPS):
        parser.error(f"unknown group(s); choose from {', '.join(GROUPS)}")
    methods = args.methods.split(",")
    if set(methods) - set(METHODS):
        parser.error(f"unknown method(s); choose from {', '.join(METHODS)}")

    args.out.mkdir(parents=True, exist_ok=True)
    log = args.out / "runs.jsonl"
    records = [json.loads(x) for x in log.read_text().splitlines()] if log.exists() else []
    same = {"preset": args.preset, "data": args.data}
    records = [r for r in records if all(r.get(k) == v for k, v in same.items())]
    done = {(run_key(r), r["seed"], r["steps"]) for r in records}
    todo = [r for r in plan(args.images, [int(b) for b in args.batches.split(",")], args.batch_size)
            if r["group"] in groups and r["method"] in methods]
    t0 = time.perf_counter()
    for run in todo:
        if (run_key(run), args.seed, run["steps"]) in done:
            continue
        record = execute(run, preset=args.preset, data=args.data, seed=args.seed, device=args.device, work=args.work)
        records.append(record)
        with open(log, "a") as f:
            f.write(json.dumps(record) + "\n")
        print(f"[{time.perf_counter() - t0:6.0f}s] {run['group']:8s} {run_key(run)}: k-NN {record['knn_top1']:.3f} "
              f"({record['seconds']:.0f} s)", flush=True)
    summarise(records, args.out, images=args.images, base_batch=args.batch_size)


if __name__ == "__main__":
    main()
