"""Experiment 1: the paper's comparison at small scale, on the demo data.

Every arm pretrains the same preset for the same steps and batch on ``--data`` (default: demo
v6, objects classed by their pattern), with several seeds, and is evaluated on the validation
split with ``evaluate``'s standard protocols:

- **dense mIoU**: BatchNorm + linear head on the frozen last-block patch tokens, 1,000
  iterations, sliding-window inference, mIoU from the dataset-wide confusion matrix (photo =
  class 0, one class per pattern);
- **zero-shot top-1** over the pattern classes (the demo's templates averaged);
- **retrieval R@1**, image -> text, over the validation captions;
- **k-NN top-1** of the [CLS] embedding (k = 20, T = 0.07);
- **s / step**: training wall time per step (machine-dependent; compare within one table).

Arms: the paper's baselines as recipes (``clip``, ``flip``, ``slip``, ``a-clip-like``),
``detailclip``, and DetailCLIP without each mechanism (``--no-distill``, ``--no-reconstruct``,
no removal, random instead of attention-guided removal). An ``untrained`` reference (the
DetailCLIP model at its seeded initialisation) is evaluated alike. Writes, under ``--out``::

    runs.jsonl      one record per (arm, seed), appended as each finishes
    results.md      mean +- std over seeds per arm, and the settings
    results.png     bar charts with error bars

600 steps at batch 48 by default: the shipped model's budget, at which DetailCLIP reads demo
v6's patterns (86.6 % zero-shot; 300 steps gave 38 %). Runs already in runs.jsonl (same data,
steps, batch and preset) are skipped, so an interrupted
experiment continues where it stopped. One command (CPU defaults; ``--device cuda --preset
small`` on a GPU); one seed of the ten arms takes about 55 minutes on 2 CPU cores, and the
published table's three seeds (``--seeds 0,1,2``, about 2 h 45 min) add the spreads::

    .venv/bin/python examples/experiment_methods.py --out docs/experiments/methods
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

# arm -> (recipe, {option: value} laid over it the way the pretrain command's options are)
ARMS = {
    "CLIP": ("clip", {}),
    "FLIP": ("flip", {}),
    "SLIP": ("slip", {}),
    "A-CLIP-like": ("a-clip-like", {}),
    "DetailCLIP": ("detailclip", {}),
    "no distill": ("detailclip", {"no_distill": True}),
    "no reconstruct": ("detailclip", {"no_reconstruct": True}),
    "no removal": ("detailclip", {"removal": "none", "keep_ratio": 1.0}),
    "random removal": ("detailclip", {"removal": "random"}),
}
UNTRAINED = "untrained"
METRICS = [("dense mIoU", "dense", "mIoU"), ("zero-shot top-1", "zeroshot", "top1"),
           ("retrieval R@1", "retrieval", "image_to_text_R@1"), ("k-NN top-1", "probe", "knn_top1"),
           ("s / step", "time", "per_step")]


def configs(arm: str, *, preset: str, steps: int, batch_size: int, seed: int):
    """The model and training configs of one arm, built as ``pretrain --recipe`` builds them."""
    from detailclip_cli.core.training.settings import new_configs

    recipe, extra = ARMS[arm]
    given = {"steps": steps, "batch_size": batch_size, "seed": seed, "log_every": max(1, steps // 20),
             "save_every": steps}
    given.update({k: v for k, v in extra.items() if not k.startswith("no_")})
    model_cfg, train_cfg = new_configs(preset, None, given, epochs=None, recipe=recipe,
                                       count_samples=lambda: 0)
    if extra.get("no_distill"):
        model_cfg.head = None
    if extra.get("no_reconstruct"):
        model_cfg.decoder = None
    return model_cfg, train_cfg


def evaluate(model, data: str, *, seed: int) -> dict:
    """Every arm's metrics on the validation split, with the protocols' settings."""
    from detailclip_cli.core.use.dense import DenseProbeConfig
    from detailclip_cli.core.use.evaluate import run_evaluation

    result = run_evaluation(model, data, tasks=("zeroshot", "retrieval", "dense", "probe"),
                            dense=DenseProbeConfig(seed=seed), seed=seed)
    m = result["metrics"]
    return {
        "dense": {"mIoU": m["dense"]["mIoU"], "pixel_accuracy": m["dense"]["pixel_accuracy"]},
        "zeroshot": {"top1": m["zeroshot"]["top1"]},
        "retrieval": {"image_to_text_R@1": m["retrieval"]["image_to_text_R@1"]},
        "probe": {"knn_top1": m["probe"]["knn"]["top1"]},
        "protocol": {task: m[task].get("protocol") for task in m},
    }


def run_arm(arm: str, seed: int, *, data: str, preset: str, steps: int, batch_size: int, work: Path,
            device: str) -> dict:
    from detailclip_cli.core.config import load_preset
    from detailclip_cli.core.device import seed_everything
    from detailclip_cli.core.model.detailclip import DetailCLIP
    from detailclip_cli.core.store.io import load_model
    from detailclip_cli.core.training.pretrain import train

    if arm == UNTRAINED:
        seed_everything(seed)
        model = DetailCLIP(load_preset(preset)[0]).to(device).eval()
        return {"arm": arm, "seed": seed, **evaluate(model, data, seed=seed),
                "time": {"per_step": 0.0}}
    model_cfg, train_cfg = configs(arm, preset=preset, steps=steps, batch_size=batch_size, seed=seed)
    out = work / f"{arm.replace(' ', '-')}-s{seed}"
    t0 = time.perf_counter()
    for _ in train(model_cfg, train_cfg, data=data, out_dir=out, device=device, force=True):
        pass
    per_step = (time.perf_counter() - t0) / steps
    model = load_model(out).to(device).eval()
    return {"arm": arm, "seed": seed, **evaluate(model, data, seed=seed),
            "time": {"per_step": per_step}}


def summarise(records: list[dict], out: Path, *, title: str) -> None:
    rows = {}
    for arm in [*ARMS, UNTRAINED]:
        runs = [r for r in records if r["arm"] == arm]
        if runs:
            # a figure recorded as null (a step time taken on shared cores) is left out of its mean
            rows[arm] = {label: [r[group][key] for r in runs if r[group].get(key) is not None]
                         for label, group, key in METRICS}
    lines = [title, "", "| arm | " + " | ".join(m[0] for m in METRICS) + " | n |",
             "|---|" + "---|" * (len(METRICS) + 1)]
    for arm, cells in rows.items():
        fmt = []
        for label, values in cells.items():
            mean, spread = statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0
            digits = 2 if label == "s / step" else 3
            fmt.append(f"{mean:.{digits}f} ± {spread:.{digits}f}")
        lines.append(f"| {arm} | " + " | ".join(fmt) + f" | {len(cells[METRICS[0][0]])} |")
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))

    from matplotlib.figure import Figure

    fig = Figure(figsize=(14, 3.8), layout="constrained")
    axes = fig.subplots(1, len(METRICS))
    names = list(rows)
    colours = {"CLIP": "#888888", "DetailCLIP": "#d9534f", UNTRAINED: "#dddddd"}
    for ax, (label, _, _) in zip(axes, METRICS):
        values = [rows[a][label] for a in names]
        means = [statistics.mean(v) for v in values]
        errs = [statistics.stdev(v) if len(v) > 1 else 0.0 for v in values]
        ax.bar(range(len(names)), means, yerr=errs, capsize=3, color=[colours.get(a, "#5b8fd9") for a in names])
        ax.set_xticks(range(len(names)), names, rotation=50, ha="right", fontsize=8)
        ax.set_title(label, fontsize=10)
    fig.suptitle(title, fontsize=10)
    fig.savefig(out / "results.png", dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("docs/experiments/methods"))
    parser.add_argument("--data", default="demo")
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--batch-size", type=int, default=48)
    parser.add_argument("--seeds", default="0", help="comma-separated; the published table: 0,1,2")
    parser.add_argument("--arms", default=",".join([*ARMS, UNTRAINED]),
                        help="comma-separated subset of: " + ", ".join([*ARMS, UNTRAINED]))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--work", type=Path, default=Path("runs/experiment-methods"), help="where run folders go")
    args = parser.parse_args()
    unknown = set(args.arms.split(",")) - {*ARMS, UNTRAINED}
    if unknown:
        parser.error(f"unknown arm(s): {', '.join(sorted(unknown))}")

    args.out.mkdir(parents=True, exist_ok=True)
    log = args.out / "runs.jsonl"
    setting = {"data": args.data, "preset": args.preset, "steps": args.steps, "batch_size": args.batch_size}
    records = [json.loads(x) for x in log.read_text().splitlines()] if log.exists() else []
    records = [r for r in records if all(r.get(k) == v for k, v in setting.items())]
    done = {(r["arm"], r["seed"]) for r in records}
    t0 = time.perf_counter()
    for seed in [int(s) for s in args.seeds.split(",")]:
        for arm in args.arms.split(","):
            if (arm, seed) in done:
                continue
            record = {**setting, **run_arm(arm, seed, data=args.data, preset=args.preset, steps=args.steps,
                                          batch_size=args.batch_size, work=args.work, device=args.device)}
            records.append(record)
            with open(log, "a") as f:
                f.write(json.dumps(record) + "\n")
            print(f"[{time.perf_counter() - t0:6.0f}s] {arm} seed {seed}: "
                  + ", ".join(f"{label} {record[g][k]:.3f}" for label, g, k in METRICS), flush=True)
    summarise(records, args.out, title=f"{args.data}, {args.preset} preset, {args.steps} steps at batch "
              f"{args.batch_size}; mean ± std over seeds (n in the last column)")


if __name__ == "__main__":
    main()
