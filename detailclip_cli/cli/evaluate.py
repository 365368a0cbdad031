"""``detailclip evaluate``: zero-shot, retrieval, dense linear probe and [CLS] k-NN in one record."""

from __future__ import annotations

import time
from typing import Annotated

import typer

from detailclip_cli.cli import options as opts
from detailclip_cli.cli.console import err_console, say
from detailclip_cli.cli.inputs import load_model
from detailclip_cli.cli.output import TableOrJson, print_tables, write_json
from detailclip_cli.core.choices import EVAL_TASKS, EvalTask, one_of
from detailclip_cli.core.store.shipped import model_name


def evaluate(
    data: Annotated[str, typer.Option(
        "--data", metavar="PATH", rich_help_panel=opts.DATA,
        help="Evaluation data: 'demo', or a folder with train/ and val/ (class sub-folders, captions, "
        "<image>.mask.png masks).")] = "demo",
    model: opts.ModelOpt = None,
    pretrained: opts.PretrainedOpt = None,
    task: Annotated[list[EvalTask], typer.Option(
        "--task", metavar="NAME", rich_help_panel=opts.METHOD,
        help=f"{one_of(EvalTask)} (repeatable).")] = [EvalTask.all],  # noqa: B006
    templates: Annotated[str | None, typer.Option(
        "--templates", metavar="NAME", rich_help_panel=opts.METHOD, show_default=False,
        help="Zero-shot templates (see zero-shot --help).")] = None,
    probe_epochs: Annotated[int, typer.Option(
        "--probe-epochs", metavar="N", min=1, rich_help_panel=opts.METHOD, help="Epochs of the dense linear probe.")] = 20,
    fmt: Annotated[TableOrJson, typer.Option(
        "--format", "-f", rich_help_panel=opts.OUTPUT, help="table for people, json for one record.")] = TableOrJson.table,
    output: opts.OutputOpt = None,
    device: opts.DeviceOpt = "auto",
) -> None:
    """Evaluate a model: zero-shot top-1/top-5/mean per-class recall, image-text retrieval R@1/5/10,
    a dense linear probe on frozen patch features (mIoU, pixel accuracy) and [CLS] k-NN accuracy,
    on the validation split (probes train on the train split).

    [bold]Examples[/bold]

      detailclip evaluate --model runs/demo --data demo

      detailclip evaluate --model runs/demo --data ./my_set --task dense --format json
    """
    # imported on use, not at the top: --help must not load torch (start-up time)
    from detailclip_cli.core.use.evaluate import run_evaluation
    from detailclip_cli.core.use.templates import resolve_templates

    console = err_console()
    tasks = tuple(t.value for t in EVAL_TASKS) if EvalTask.all in task else tuple(dict.fromkeys(t.value for t in task))
    net = load_model(model, pretrained, device, console)
    template_list = resolve_templates(templates, data=data)
    t0 = time.perf_counter()
    results = run_evaluation(net, data, tasks=tasks, templates=template_list, probe_epochs=probe_epochs,
                             on_stage=lambda s: say(console, f"evaluate: {s} ..."))
    for name, reason in results.get("skipped", {}).items():
        say(console, f"skipped {name}: {reason}")
    record = {"model": model_name(model), "pretrained": pretrained, "dataset": data,
              "tasks": list(tasks), "metrics": {k: v for k, v in results.items() if k != "skipped"},
              "skipped": results.get("skipped", {}), "seconds": round(time.perf_counter() - t0, 2)}
    if fmt is TableOrJson.json:
        write_json(record, output)
        return
    from rich.table import Table

    table = Table(title=f"{record['model']} on {data}")
    table.add_column("task")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for group, metrics in record["metrics"].items():
        for key, value in metrics.items():
            table.add_row(group, key, f"{value:.4f}" if isinstance(value, float) else str(value))
    print_tables([table], output)
