"""``detailclip evaluate``: zero-shot, retrieval, a dense linear probe and [CLS] probes on a data set
in the layout it is distributed in (ADE20K, VOC, Cityscapes, COCO, Karpathy, clip_benchmark,
ImageNet, or ours), each task's protocol recorded beside its metrics."""

from __future__ import annotations

import time
from typing import Annotated, Optional

import typer

from detailclip_cli.cli import options as opts
from detailclip_cli.cli.console import err_console, say, stage_progress
from detailclip_cli.cli.inputs import load_model
from detailclip_cli.cli.output import TableOrJson, finish, print_tables, write_json
from detailclip_cli.core.choices import EVAL_TASKS, EvalTask, one_of
from detailclip_cli.core.store.shipped import model_name



def evaluate(
    data: Annotated[str, typer.Option(
        "--data", metavar="PATH", rich_help_panel=opts.DATA,
        help="'demo', or a data set as distributed: ADEChallengeData2016/, VOC2012/, Cityscapes, COCO (annotations/"
        "captions_*2017.json), dataset_coco.json / dataset_flickr30k.json, a clip_benchmark webdataset, an ImageNet "
        "folder of WordNet ids; or our folders and tables (docs/benchmarks.md).")] = "demo",
    layout: Annotated[str, typer.Option(
        "--layout", metavar="NAME", rich_help_panel=opts.DATA,
        help="Read --data as this layout instead of finding it from the files (names in docs/benchmarks.md).")] = "auto",
    split: Annotated[Optional[str], typer.Option(
        "--split", metavar="NAME", rich_help_panel=opts.DATA, show_default=False,
        help="The evaluated split: train, val, test or the layout's own name (default: the one results are "
        "published on).")] = None,
    limit: Annotated[Optional[int], typer.Option(
        "--limit", metavar="N", min=1, rich_help_panel=opts.DATA, show_default=False,
        help="Only the first N images of each split (a quick try).")] = None,
    strict: opts.StrictOpt = False,
    model: opts.ModelOpt = None,
    pretrained: opts.PretrainedOpt = None,
    no_verify: opts.NoVerifyOpt = False,
    task: Annotated[list[EvalTask], typer.Option(
        "--task", metavar="NAME", rich_help_panel=opts.METHOD,
        help=f"{one_of(EvalTask)} (repeatable).")] = [EvalTask.all],  # noqa: B006
    templates: Annotated[Optional[str], typer.Option(
        "--templates", metavar="NAME", rich_help_panel=opts.METHOD, show_default=False,
        help="Zero-shot templates (see zero-shot --help); default: the data's own, else its layout's.")] = None,
    resolution: Annotated[Optional[int], typer.Option(
        "--resolution", metavar="PX", min=1, rich_help_panel=opts.METHOD, show_default=False,
        help="Image side for zero-shot, retrieval and probes (position embeddings resampled; default: the "
        "model's).")] = None,
    probe_iters: Annotated[int, typer.Option(
        "--probe-iters", metavar="N", min=1, rich_help_panel=opts.METHOD, help="Dense probe: training iterations.")] = 1000,
    probe_lr: Annotated[float, typer.Option(
        "--probe-lr", metavar="F", min=0.0, rich_help_panel=opts.METHOD, help="Dense probe: peak learning rate.")] = 1e-3,
    probe_batch: Annotated[int, typer.Option(
        "--probe-batch", metavar="N", min=2, rich_help_panel=opts.METHOD, help="Dense probe: crops per step.")] = 16,
    probe_crop: Annotated[Optional[int], typer.Option(
        "--probe-crop", metavar="PX", min=1, rich_help_panel=opts.METHOD, show_default=False,
        help="Dense probe: crop side in training and inference scale (default: the model's image size).")] = None,
    probe_layers: Annotated[int, typer.Option(
        "--probe-layers", metavar="K", min=1, rich_help_panel=opts.METHOD,
        help="Dense probe: concatenate the patch tokens of the last K blocks.")] = 1,
    dense_inference: Annotated[str, typer.Option(
        "--dense-inference", metavar="MODE", rich_help_panel=opts.METHOD,
        help="Dense probe: slide (overlapping crops) or resize (the whole image).")] = "slide",
    seed: Annotated[int, typer.Option(
        "--seed", metavar="N", min=0, max=2**32 - 1, rich_help_panel=opts.METHOD,
        help="Seed of the probes (dense crops and head, the logistic probe's held-out part).")] = 0,
    batch_size: opts.BatchSizeOpt = 64,
    workers: Annotated[Optional[int], typer.Option(
        "--workers", metavar="N", min=0, rich_help_panel=opts.DATA, show_default=False,
        help="Worker processes that read the images; with the model on a CPU they also encode them for "
        "zero-shot, retrieval and the [CLS] probes, one thread each. Default: one per core (at most 8), "
        "none under 64 images; 0 reads in the main process.")] = None,
    fmt: Annotated[TableOrJson, typer.Option(
        "--format", "-f", rich_help_panel=opts.OUTPUT, help="table for people, json for one record.")] = TableOrJson.table,
    output: opts.OutputOpt = None,
    device: opts.DeviceOpt = "auto",
) -> None:
    """Evaluate a model by the protocols people publish: zero-shot top-1/top-5/mean per-class recall,
    retrieval R@1/5/10 with every caption of each image, a dense linear probe on frozen patch tokens
    (mIoU, pixel accuracy) and [CLS] k-NN and logistic-regression probes, on the data set's evaluation
    split (probes train on its train split). Tasks the data cannot serve are skipped and named;
    unreadable images are skipped, counted in the result, and make the exit code 1.

    [bold]Examples[/bold]

      detailclip evaluate --model runs/demo --data demo

      detailclip evaluate --data ~/data/ADEChallengeData2016 --task dense --format json

      detailclip evaluate --data ~/data/wds_imagenet1k --task zeroshot --limit 1000
    """
    # imported on use, not at the top: --help must not load torch (start-up time)
    from detailclip_cli.core.use.dense import DenseProbeConfig
    from detailclip_cli.core.use.evaluate import run_evaluation

    console = err_console()
    tasks = tuple(t.value for t in EVAL_TASKS) if EvalTask.all in task else tuple(dict.fromkeys(t.value for t in task))
    net = load_model(model, pretrained, device, console, verify=not no_verify)
    dense = DenseProbeConfig(iterations=probe_iters, lr=probe_lr, batch_size=probe_batch, crop=probe_crop,
                             last_k=probe_layers, inference=dense_inference, seed=seed)
    t0 = time.perf_counter()
    with stage_progress(console) as progress:
        record = run_evaluation(net, data, tasks=tasks, layout=layout, split=split, limit=limit, templates=templates,
                                image_size=resolution, dense=dense, batch_size=batch_size, workers=workers,
                                strict=strict, seed=seed, progress=progress)
    d = record["data"]
    say(console, f"evaluate: {d['layout']} layout, split {d['split']}: {d['images']} images, {d['captions']} captions")
    for name, reason in record["skipped"].items():
        say(console, f"skipped {name}: {reason}")
    for message in record["skipped_examples"]:
        say(console, f"skipped image: {message}")
    if record["skipped_images"]:
        say(console, f"{record['skipped_images']} unreadable images skipped (--strict stops at the first)")
    record = {"model": model_name(model), "pretrained": pretrained, "dataset": data, "tasks": list(tasks),
              **record, "seconds": round(time.perf_counter() - t0, 2)}
    if fmt is TableOrJson.json:
        write_json(record, output)
    else:
        print_tables([_table(record)], output)
    finish(record["skipped_images"])


def _table(record: dict):
    from rich.table import Table

    d = record["data"]
    table = Table(title=f"{record['model']} on {record['dataset']} ({d['layout']}, {d['split']})")
    table.add_column("task")
    table.add_column("metric")
    table.add_column("value", justify="right")

    def rows(group: str, metrics: dict, prefix: str = "") -> None:
        for key, value in metrics.items():
            if key in ("protocol", "iou"):
                continue
            if isinstance(value, dict):
                rows(group, value, f"{prefix}{key} ")
            else:
                table.add_row(group, prefix + key, f"{value:.4f}" if isinstance(value, float) else str(value))

    for group, metrics in record["metrics"].items():
        rows(group, metrics)
    return table
