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
                 "scores, data, inference, startup, memory. Default: all.", show_default=False),
]


def bench(
    preset: Annotated[str, typer.Option("--preset", help="Model preset: tiny, small or base.")] = "small",
    batch_size: Annotated[Optional[int], typer.Option(
        "--batch-size", min=1, help="Images per training step (two views each), also the inference batch. "
        "Default: 8 on CPU, the preset's batch on CUDA.", show_default=False)] = None,
    device: DeviceOpt = "auto",
    repeats: Annotated[int, typer.Option("--repeats", min=1, help="Timed runs per figure (the median is shown).")] = 5,
    warmup: Annotated[int, typer.Option("--warmup", min=0, help="Untimed runs before them.")] = 1,
    sections: SectionsOpt = None,
    fmt: Annotated[TableOrJson, typer.Option("--format", "-f",
                                             help="table for people, json for one record.")] = TableOrJson.table,
    output: OutputOpt = None,
) -> None:
    """Measure a training step of plain CLIP and of DetailCLIP (and where a DetailCLIP step's time
    goes), the student encoder at keep ratios 1.0 / 0.5 / 0.25, FLOPs and MFU, the cost of the
    teacher's attention scores, data-loader throughput, zero-shot speed against open_clip,
    start-up time and a step's peak memory, all on one preset, batch and device. Every time is a
    median over --repeats runs after --warmup; the issue's speed targets are checked at the end.

    [bold]Examples[/bold]

      detailclip bench --preset small --batch-size 8

      detailclip bench --preset tiny --sections train,keep,flops --format json
    """
    # imported on use, not at the top: --help must not load torch (start-up time)
    from detailclip_cli.tools.bench import BenchConfig, parse_sections, run_bench

    console = err_console()
    cfg = BenchConfig(preset=preset, batch_size=batch_size, device=device, repeats=repeats, warmup=warmup,
                      sections=parse_sections(sections))
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


def _rows(r: dict):
    """(section, figure, value, comparison) rows of a bench record."""
    if "train" in r:
        t = r["train"]
        yield "train", "CLIP step", f"{_s(t['clip_step_s'])}  ({t['clip_images_per_s']:.1f} img/s)", ""
        yield ("train", "DetailCLIP step", f"{_s(t['detailclip_step_s'])}  ({t['detailclip_images_per_s']:.1f} img/s)",
               _x(t["detailclip_vs_clip"], "CLIP"))
    if "split" in r:
        sp = r["split"]
        for key, seconds in sp["stages_s"].items():
            yield "split", STAGE_NAMES.get(key, key), _s(seconds), f"{_pct(sp['fraction'][key])} of stages"
        yield "split", "sum of stages", _s(sp["sum_s"]), _x(sp["sum_vs_step"], "full step")
    if "keep" in r:
        for row in r["keep"]["rows"]:
            yield ("keep", f"encoder fwd+bwd, keep {row['keep_ratio']:g} ({row['tokens']} tok)",
                   f"{_s(row['seconds'])}, {row['gflops']:.1f} GFLOP", _x(row["speedup"], "speed-up"))
    if "flops" in r:
        f = r["flops"]
        yield "flops", "CLIP fwd+bwd", f"{f['clip_gflops']:.1f} GFLOP", ""
        yield "flops", "DetailCLIP fwd+bwd", f"{f['detailclip_gflops']:.1f} GFLOP", _x(f["detailclip_vs_clip"], "CLIP")
        for dtype, rate in f["matmul_gflops_per_s"].items():
            peak = "peak" if dtype == f["compute_dtype"] else ""
            yield "flops", f"matmul {f['matmul_size']}² {dtype}", f"{rate:.1f} GFLOP/s", peak
        yield "flops", "CLIP achieved", f"{f['clip_achieved_gflops_per_s']:.1f} GFLOP/s", f"MFU {_pct(f['clip_mfu'])}"
        yield ("flops", "DetailCLIP achieved", f"{f['detailclip_achieved_gflops_per_s']:.1f} GFLOP/s",
               f"MFU {_pct(f['detailclip_mfu'])}")
        yield "flops", "machinery overhead", f"{f['machinery_overhead']:.3f}", "time / FLOP ratio"
    if "scores" in r:
        sc = r["scores"]
        yield "scores", "teacher forward", _s(sc["forward_s"]), ""
        yield "scores", "teacher with scores", _s(sc["forward_with_scores_s"]), f"{100 * sc['overhead']:+.1f}%"
    if "data" in r:
        d = r["data"]
        for row in d["rows"]:
            yield ("data", f"loader, {row['workers']} workers",
                   f"{row['images_per_s']:.1f} img/s", _x(row["vs_step"], "step"))
        yield "data", "DetailCLIP step eats", f"{d['step_images_per_s']:.1f} img/s", ""
    if "inference" in r:
        i = r["inference"]
        yield ("inference", "encode_image, ours", f"{i['ours_images_per_s']:.1f} img/s",
               _x(i["ours_vs_open_clip"], "open_clip"))
        yield ("inference", "open_clip, same arch", f"{i['open_clip_images_per_s']:.1f} img/s",
               f"max |diff| {i['max_abs_diff']:.1e}")
    if "startup" in r:
        s = r["startup"]
        yield "startup", "detailclip --help", _s(s["help_s"]), _x(s["help_vs_import_torch"], "import torch")
        yield "startup", 'python -c "import torch"', _s(s["import_torch_s"]), ""
        yield "startup", 'python -c "pass"', _s(s["python_s"]), ""
    if "memory" in r:
        m = r["memory"]
        for variant, name in (("clip", "CLIP"), ("detailclip", "DetailCLIP")):
            ratio = f", {_x(m['detailclip_vs_clip'], 'CLIP')}" if variant == "detailclip" else ""
            yield ("memory", f"{name} step peak", f"{m[variant]['step_peak_mib']:.0f} MiB",
                   f"over {m[variant]['model_mib']:.0f} MiB built{ratio}")


def figures_table(record: dict):
    from rich.table import Table

    table = Table(title=f"detailclip bench: preset {record['preset']}, batch {record['batch_size']}, "
                        f"{record['device']} ({record['device_name']}, {record['threads']} threads), "
                        f"median of {record['repeats']}")
    if record.get("load_average"):
        before, after = record["load_average"]
        table.caption = (f"load average {before} before, {after} after; this process used "
                         f"{record['cpu_per_wall']:g} CPU-seconds per second (others' load skews the figures)")
    for name, justify in (("section", "left"), ("figure", "left"), ("value", "right"), ("comparison", "left")):
        table.add_column(name, justify=justify)
    previous = None
    for section, figure, value, comparison in _rows(record):
        table.add_row(section if section != previous else "", figure, value, comparison)
        previous = section
    return table


def targets_table(record: dict):
    from rich.table import Table

    table = Table(title="targets")
    for name, justify in (("target", "left"), ("value", "right"), ("goal", "left"), ("met", "left")):
        table.add_column(name, justify=justify)
    for name, t in record["targets"].items():
        table.add_row(name, f"{t['value']:.3g}", t["target"], "[green]yes[/]" if t["met"] else "[red]no[/]")
    return table
