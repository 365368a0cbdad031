"""``detailclip bench``: what a training step, the data pipeline, inference and start-up cost."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from detailclip_cli.cli.console import err_console, say
from detailclip_cli.cli.options import DeviceOpt, OutputOpt
from detailclip_cli.cli.output import TableOrJson, print_tables, write_json

SectionsOpt = Annotated[
    Optional[list[str]],
    typer.Option("--sections", help="What to measure, comma-separated or repeated: train, split, keep, flops, "
                 "scores, data, inference, bulk, startup, memory. Default: all.", show_default=False),
]


def bench(
    preset: Annotated[str, typer.Option("--preset", help="Model preset: tiny, small or base.")] = "small",
    batch_size: Annotated[Optional[int], typer.Option(
        "--batch-size", min=1, help="Images per training step (two views each), also the inference batch. "
        "Default: 8 on CPU, the preset's batch on CUDA.", show_default=False)] = None,
    device: DeviceOpt = "auto",
    repeats: Annotated[int, typer.Option("--repeats", min=1, help="Timed runs per figure: the median is shown, "
                                         "with the min-max range; targets are judged on the median.")] = 5,
    warmup: Annotated[int, typer.Option("--warmup", min=0, help="Untimed runs before them.")] = 1,
    sections: SectionsOpt = None,
    bulk_images: Annotated[int, typer.Option("--bulk-images", min=1, metavar="N",
                                             help="Demo images the bulk zero-shot figure classifies (the issue's "
                                             "figure: 5000).")] = 128,
    fmt: Annotated[TableOrJson, typer.Option("--format", "-f",
                                             help="table for people, json for one record.")] = TableOrJson.table,
    output: OutputOpt = None,
) -> None:
    """Measure a training step of plain CLIP and of DetailCLIP (and where a DetailCLIP step's time
    goes), the student encoder at keep ratios 1.0 / 0.5 / 0.25, FLOPs and MFU, the cost of the
    teacher's attention scores, data-loader throughput (and the images one core prepares),
    zero-shot speed against open_clip (encoding, and over image files), the start-up of each
    command against `import torch`, and a step's peak memory, all on one preset, batch and
    device. Every time is the median of --repeats runs after --warmup, shown with its min-max
    range; figures that are compared run back to back in rounds. The speed targets are checked
    on the medians at the end.

    [bold]Examples[/bold]

      detailclip bench --preset small --batch-size 8

      detailclip bench --preset tiny --sections train,keep,flops --format json

      detailclip bench --preset tiny --sections bulk,startup --bulk-images 5000
    """
    # imported on use, not at the top: --help must not load torch (start-up time)
    from detailclip_cli.tools.bench import BenchConfig, parse_sections, run_bench

    console = err_console()
    cfg = BenchConfig(preset=preset, batch_size=batch_size, device=device, repeats=repeats, warmup=warmup,
                      sections=parse_sections(sections), bulk_images=bulk_images)
    cfg.validate()
    if console.is_terminal:
        with console.status("bench ...") as status:
            record = run_bench(cfg, on_stage=lambda s: status.update(f"bench: {s} ..."))
    else:
        record = run_bench(cfg, on_stage=lambda s: say(console, f"bench: {s} ..."))
    if fmt is TableOrJson.json:
        write_json(record, output)
        return
    print_tables([figures_table(record), targets_table(record)], output)


# -- presentation ---------------------------------------------------------------------------------


def _s(seconds: float) -> str:
    return f"{seconds * 1e3:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"


def _x(ratio: float | None, what: str = "") -> str:
    return "" if ratio is None else f"{ratio:.2f}x {what}".rstrip()


def _pct(fraction: float) -> str:
    return f"{100 * fraction:.1f}%"


STAGE_NAMES = {
    "teacher": "teacher pass + scores", "student_encoder": "student encoder",
    "text_tower": "text tower", "decoder": "decoder", "heads_losses": "heads and losses",
    "loss_check": "loss check", "backward": "backward", "optimizer": "AdamW step",
    "ema": "EMA update",
}


def _range(r: dict, section: str, key: str, fmt) -> str:
    """``min-max`` of a figure over the repeats, in the value's own format ("" without a spread)."""
    sp = r[section].get("spread", {}).get(key)
    return "" if sp is None or sp["n"] < 2 else f"{fmt(sp['min'])} – {fmt(sp['max'])}"


def _rows(r: dict):
    """(section, figure, value, range over the repeats, comparison) rows of a bench record."""
    if "train" in r:
        t = r["train"]
        yield ("train", "CLIP step", f"{_s(t['clip_step_s'])}  ({t['clip_images_per_s']:.1f} img/s)",
               _range(r, "train", "clip_step_s", _s), "")
        yield ("train", "DetailCLIP step", f"{_s(t['detailclip_step_s'])}  ({t['detailclip_images_per_s']:.1f} img/s)",
               _range(r, "train", "detailclip_step_s", _s), _x(t["detailclip_vs_clip"], "CLIP"))
    if "split" in r:
        sp = r["split"]
        for key, seconds in sp["stages_s"].items():
            yield ("split", STAGE_NAMES.get(key, key), _s(seconds), _range(r, "split", key, _s),
                   f"{_pct(sp['fraction'][key])} of stages")
        yield "split", "sum of stages", _s(sp["sum_s"]), "", _x(sp["sum_vs_step"], "the train step")
        yield ("split", "untimed in a staged step", _pct(sp["untimed_fraction"]),
               _range(r, "split", "untimed_fraction", _pct), "")
    if "keep" in r:
        for row in r["keep"]["rows"]:
            yield ("keep", f"encoder fwd+bwd, keep {row['keep_ratio']:g} ({row['tokens']} tok)",
                   f"{_s(row['seconds'])}, {row['gflops']:.1f} GFLOP",
                   _range(r, "keep", f"seconds_{row['keep_ratio']}", _s), _x(row["speedup"], "speed-up"))
    if "flops" in r:
        f = r["flops"]
        yield "flops", "CLIP fwd+bwd", f"{f['clip_gflops']:.1f} GFLOP", "", ""
        yield "flops", "DetailCLIP fwd+bwd", f"{f['detailclip_gflops']:.1f} GFLOP", "", _x(f["detailclip_vs_clip"],
                                                                                           "CLIP")
        for dtype, rate in f["matmul_gflops_per_s"].items():
            peak = dtype == f["compute_dtype"]
            yield ("flops", f"matmul {f['matmul_size']}² {dtype}", f"{rate:.1f} GFLOP/s",
                   _range(r, "flops", "matmul_gflops_per_s", lambda x: f"{x:.0f}") if peak else "",
                   "peak" if peak else "")
        yield ("flops", "CLIP achieved", f"{f['clip_achieved_gflops_per_s']:.1f} GFLOP/s",
               _range(r, "flops", "clip_mfu", _pct), f"MFU {_pct(f['clip_mfu'])}")
        yield ("flops", "DetailCLIP achieved", f"{f['detailclip_achieved_gflops_per_s']:.1f} GFLOP/s",
               _range(r, "flops", "detailclip_mfu", _pct), f"MFU {_pct(f['detailclip_mfu'])}")
        yield ("flops", "machinery overhead", f"{f['machinery_overhead']:.3f}",
               _range(r, "flops", "machinery_overhead", lambda x: f"{x:.3f}"), "time / FLOP ratio")
    if "scores" in r:
        sc = r["scores"]
        yield "scores", "teacher forward", _s(sc["forward_s"]), _range(r, "scores", "forward_s", _s), ""
        yield ("scores", "teacher with scores", _s(sc["forward_with_scores_s"]),
               _range(r, "scores", "forward_with_scores_s", _s), f"{100 * sc['overhead']:+.1f}%")
    if "data" in r:
        d = r["data"]
        for row in d["rows"]:
            yield ("data", f"loader, {row['workers']} workers", f"{row['images_per_s']:.1f} img/s",
                   _range(r, "data", f"workers_{row['workers']}", lambda x: f"{x:.1f}"), _x(row["vs_step"], "step"))
        yield "data", "DetailCLIP step eats", f"{d['step_images_per_s']:.1f} img/s", "", ""
        per_core = d["loader_per_core"]
        yield ("data", f"one core, {per_core['image_size']} px views from photos",
               f"{per_core['ours_two_views']:.1f} img/s", "",
               f"open_clip: {per_core['open_clip_two_views']:.1f} (two views), "
               f"{per_core['open_clip_one_view']:.1f} (one)")
        yield "data", "cores to feed the step", f"{d['cores_per_device']:.2f}", "", "per device (GPU) at this rate"
    if "inference" in r:
        i = r["inference"]
        yield ("inference", "encode_image, ours", f"{i['ours_images_per_s']:.1f} img/s",
               _range(r, "inference", "ours_s", _s), _x(i["ours_vs_open_clip"], "open_clip"))
        yield ("inference", "open_clip, same arch", f"{i['open_clip_images_per_s']:.1f} img/s",
               _range(r, "inference", "open_clip_s", _s), f"max |diff| {i['max_abs_diff']:.1e}")
    if "bulk" in r:
        b = r["bulk"]
        yield ("bulk", f"zero-shot {b['images']} files, ours", f"{b['ours_images_per_s']:.1f} img/s",
               _range(r, "bulk", "ours_s", _s), f"{_x(b['ours_vs_open_clip'], 'open_clip')}, {b['workers']} workers")
        yield ("bulk", "open_clip transform + encode_image", f"{b['open_clip_images_per_s']:.1f} img/s",
               _range(r, "bulk", "open_clip_s", _s), f"top-1 agrees on {_pct(b['top1_agreement'])}")
    if "startup" in r:
        s = r["startup"]
        yield ("startup", 'python -c "import torch"', _s(s["import_torch_s"]),
               _range(r, "startup", "import_torch_s", _s), "")
        yield "startup", 'python -c "pass"', _s(s["python_s"]), _range(r, "startup", "python_s", _s), ""
        yield ("startup", "detailclip --help", _s(s["help_s"]), _range(r, "startup", "help_s", _s),
               _x(s["help_vs_import_torch"], "import torch"))
        for name in (k.removesuffix("_extra_s") for k in s if k.endswith("_extra_s")):
            yield ("startup", f"{name.replace('_', '-')}, one image", _s(s[f"{name}_s"]),
                   _range(r, "startup", f"{name}_s", _s),
                   f"{_x(s[f'{name}_vs_import_torch'], 'import torch')}, {s[f'{name}_extra_s']:+.2f} s")
    if "memory" in r:
        m = r["memory"]
        for variant, name in (("clip", "CLIP"), ("detailclip", "DetailCLIP")):
            ratio = f", {_x(m['detailclip_vs_clip'], 'CLIP')}" if variant == "detailclip" else ""
            yield ("memory", f"{name} step peak", f"{m[variant]['step_peak_mib']:.0f} MiB", "",
                   f"over {m[variant]['model_mib']:.0f} MiB built{ratio}")


def figures_table(record: dict):
    from rich.table import Table

    table = Table(title=f"detailclip bench: preset {record['preset']}, batch {record['batch_size']}, "
                        f"{record['device']} ({record['device_name']}, {record['threads']} threads), "
                        f"median and range of {record['repeats']}")
    if record.get("load_average"):
        before, after = record["load_average"]
        table.caption = (f"load average {before} before, {after} after; this process used "
                         f"{record['cpu_per_wall']:g} CPU-seconds per second (others' load skews the figures)")
    for name, justify in (("section", "left"), ("figure", "left"), ("median", "right"), ("range", "right"),
                          ("comparison", "left")):
        table.add_column(name, justify=justify)
    previous = None
    for section, figure, value, spread, comparison in _rows(record):
        table.add_row(section if section != previous else "", figure, value, spread, comparison)
        previous = section
    return table


def targets_table(record: dict):
    from rich.table import Table

    table = Table(title="targets (judged on the median)")
    for name, justify in (("target", "left"), ("median", "right"), ("range", "right"), ("goal", "left"),
                          ("met", "left")):
        table.add_column(name, justify=justify)
    for name, t in record["targets"].items():
        lo_hi = f"{t['range'][0]:.3g} – {t['range'][1]:.3g}" if "range" in t else ""
        table.add_row(name, f"{t['value']:.3g}", lo_hi, t["target"], "[green]yes[/]" if t["met"] else "[red]no[/]")
    return table
