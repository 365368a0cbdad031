"""``detailclip zero-shot``: classify images against text labels, or evaluate on a labelled set."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from detailclip_cli.cli import options as opts
from detailclip_cli.cli.console import err_console, say, stage_progress
from detailclip_cli.cli.inputs import ImageFeed, load_model, require_images
from detailclip_cli.cli.output import (
    ResultFormat,
    finish,
    print_tables,
    write_csv,
    write_json,
    write_jsonl,
)
from detailclip_cli.core.store.shipped import model_name
from detailclip_cli.errors import UsageError

TABLE_TOP_K = 5  # ranked labels shown per image in a table or CSV unless --top-k says otherwise


def zero_shot(
    images: opts.ImagesArg = None,
    labels: Annotated[Optional[str], typer.Option(
        "--labels", "-l", metavar="A,B,C", rich_help_panel=opts.LABELS, show_default=False,
        help="Comma-separated labels, e.g. \"cat,dog,bird\".")] = None,
    labels_file: Annotated[Optional[Path], typer.Option(
        "--labels-file", metavar="FILE", rich_help_panel=opts.LABELS, show_default=False, help="A file with one label per line.")] = None,
    templates: Annotated[Optional[str], typer.Option(
        "--templates", metavar="NAME", rich_help_panel=opts.LABELS, show_default=False,
        help="Prompt templates: default, demo (the default for --eval demo), openai_imagenet, simple_imagenet, "
        "or a file with one template per line containing {}.")] = None,
    eval_data: Annotated[Optional[str], typer.Option(
        "--eval", metavar="PATH", rich_help_panel=opts.DATA, show_default=False,
        help="Evaluate on a labelled set instead: 'demo', a folder of class sub-folders (its val/ split when "
        "present), a clip_benchmark webdataset or an ImageNet folder of WordNet ids.")] = None,
    strict: opts.StrictOpt = False,
    model: opts.ModelOpt = None,
    pretrained: opts.PretrainedOpt = None,
    top_k: Annotated[Optional[int], typer.Option(
        "--top-k", "-k", metavar="N", min=1, rich_help_panel=opts.OUTPUT, show_default=False,
        help="Ranked labels per image (default: 5 in tables and CSV, all labels in JSON).")] = None,
    fmt: Annotated[ResultFormat, typer.Option(
        "--format", "-f", rich_help_panel=opts.OUTPUT,
        help="table for people; json (one document), jsonl (one object per image) or csv (--eval: table or "
        "json).")] = ResultFormat.table,
    output: opts.OutputOpt = None,
    out: Annotated[Optional[Path], typer.Option(
        "--out", metavar="DIR", rich_help_panel=opts.OUTPUT, help="With --eval: the folder for the confusion-matrix PNG.")] = None,
    batch_size: opts.BatchSizeOpt = 32,
    workers: opts.EncodeWorkersOpt = None,
    device: opts.DeviceOpt = "auto",
    no_verify: opts.NoVerifyOpt = False,
) -> None:
    """Zero-shot classification: rank text labels for each image.

    Each label becomes prompts from the templates ("a photo of a {}."); an image's
    probabilities are the softmax of the scaled cosine similarity to each label's mean prompt
    embedding. With --eval, report top-1, top-5 and mean per-class recall on a labelled set,
    a per-class table, and a confusion-matrix PNG (in --out, or beside --output).

    [bold]Examples[/bold]

      detailclip zero-shot photos/ --labels "cat,dog,bird" --top-k 2

      find imgs -name '*.jpg' | detailclip zero-shot - --labels-file labels.txt --format jsonl

      detailclip zero-shot --eval demo --model runs/demo --out reports/
    """
    console = err_console()
    if eval_data is not None:
        if images:
            raise UsageError("give images to classify or --eval DATA, not both")
        if labels or labels_file:
            raise UsageError("--eval takes its labels from the data's class folders; drop --labels")
        if fmt not in (ResultFormat.table, ResultFormat.json):
            raise UsageError("--eval writes --format table or json")
        run_eval(eval_data, model=model, pretrained=pretrained, templates=templates, fmt=fmt,
                 output=output, out=out, batch_size=batch_size, device=device, console=console, strict=strict,
                 verify=not no_verify)
        return

    # imported on use, not at the top: --help must not load torch (start-up time)
    from detailclip_cli.core.use.batching import default_workers
    from detailclip_cli.core.use.embed import ImageEncoder
    from detailclip_cli.core.use.templates import resolve_templates
    from detailclip_cli.core.use.zeroshot import build_classifier, class_probabilities

    label_list = read_labels(labels, labels_file)
    template_list = resolve_templates(templates)
    paths, failed = require_images(images, console)
    net = load_model(model, pretrained, device, console, verify=not no_verify)
    classifier = build_classifier(net, label_list, template_list)
    k = min(top_k or (len(label_list) if fmt in (ResultFormat.json, ResultFormat.jsonl) else TABLE_TOP_K),
            len(label_list))

    records = []
    feed = ImageFeed(net, paths, batch_size=batch_size, console=console, description="classify",
                     workers=default_workers(len(paths), device=net.logit_scale.device) if workers is None
                     else workers, encode=ImageEncoder(net))
    for batch in feed:
        probs = class_probabilities(net, batch.outputs, classifier).cpu()  # (B, C)
        top = probs.topk(k, dim=1)
        for path, values, indices in zip(batch.paths, top.values.tolist(), top.indices.tolist()):
            ranked = [{"label": label_list[i], "prob": round(p, 6)} for p, i in zip(values, indices)]
            records.append({"path": str(path), "label": ranked[0]["label"], "prob": ranked[0]["prob"],
                            "ranked": ranked})

    emit(records, fmt, output)
    finish(failed + feed.failed)


def read_labels(labels: str | None, labels_file: Path | None) -> list[str]:
    # imported on use, not at the top: --help must not load torch (start-up time)
    from detailclip_cli.core.use.templates import parse_labels

    if labels is None and labels_file is None:
        raise UsageError("give --labels \"a,b,c\" or --labels-file FILE (or --eval DATA)")
    if labels is not None and labels_file is not None:
        raise UsageError("give --labels or --labels-file, not both")
    if labels_file is not None:
        try:
            text = labels_file.read_text(encoding="utf-8")
        except OSError as exc:
            raise UsageError(f"cannot read --labels-file {labels_file}: {exc.strerror or exc}") from None
        except UnicodeDecodeError:
            raise UsageError(f"--labels-file {labels_file} is not UTF-8 text (one label per line)") from None
        return parse_labels(text, source=str(labels_file), one_per_line=True)
    return parse_labels(labels)


def emit(records: list[dict], fmt: ResultFormat, output: Path | None) -> None:
    if fmt == ResultFormat.json:
        write_json(records, output)
    elif fmt == ResultFormat.jsonl:
        write_jsonl(records, output)
    elif fmt == ResultFormat.csv:
        rows = [(r["path"], rank, e["label"], e["prob"]) for r in records
                for rank, e in enumerate(r["ranked"], start=1)]
        write_csv(("path", "rank", "label", "prob"), rows, output)
    else:
        from rich.table import Table

        table = Table(title="zero-shot", title_justify="left")
        table.add_column("image", overflow="fold")
        table.add_column("label", style="bold")
        table.add_column("prob", justify="right")
        table.add_column("next", style="dim")
        for r in records:
            rest = ", ".join(f"{e['label']} {e['prob']:.3f}" for e in r["ranked"][1:])
            table.add_row(r["path"], r["label"], f"{r['prob']:.3f}", rest)
        print_tables([table], output)


def run_eval(data: str, *, model, pretrained, templates, fmt, output, out, batch_size, device, console,
             strict: bool = False, verify: bool = True) -> None:
    """``--eval``: zero-shot metrics on a labelled set and a confusion-matrix picture; unreadable
    images are skipped, counted in the result and make the exit code 1 (``--strict``: stop)."""
    # imported on use, not at the top: --help must not load torch (start-up time)
    from detailclip_cli.core.data.benchmarks import open_eval_set
    from detailclip_cli.core.use.batching import SkipLog
    from detailclip_cli.core.use.templates import templates_for
    from detailclip_cli.core.use.zeroshot import evaluate_zero_shot

    eval_set = open_eval_set(data)
    if not eval_set.has_labels:
        raise UsageError(f"{data} has no class labels (expected one sub-folder per class, or a labelled layout)")
    classes = eval_set.classes
    template_list, _ = templates_for(templates, eval_set)
    net = load_model(model, pretrained, device, console, verify=verify)
    say(console, f"zero-shot on {data} ({eval_set.layout}, {eval_set.split}): {len(eval_set)} images, "
        f"{len(classes)} classes, {len(template_list)} templates")
    skipped = SkipLog()
    with stage_progress(console) as progress:
        report = evaluate_zero_shot(net, eval_set, template_list, batch_size=batch_size, skipped=skipped,
                                    strict=strict, on_batch=progress("evaluate", len(eval_set)))
    for message in skipped.examples:
        say(console, f"skipped image: {message}")

    picture = None
    if out is not None:
        picture = out / "confusion.png"
    elif output is not None:
        picture = output.with_name(output.stem + ".confusion.png")
    if picture is not None:
        # imported on use, not at the top: --help must not load matplotlib (start-up time)
        from detailclip_cli.plots import confusion_figure

        picture.parent.mkdir(parents=True, exist_ok=True)
        fig = confusion_figure(report.confusion, classes, title=f"zero-shot on {data}")
        fig.savefig(picture, dpi=120)
        say(console, f"confusion matrix: {picture}")
    else:
        say(console, "(add --out DIR to save the confusion-matrix picture)", style="dim")

    document = {"model": model_name(model), "data": data, "layout": eval_set.layout, "split": eval_set.split,
                **report.to_dict(), "skipped_images": skipped.count,
                "confusion_png": str(picture) if picture else None}
    if fmt == ResultFormat.json:
        write_json(document, output)
        finish(skipped.count)
        return
    from rich.table import Table

    summary = Table(title=f"zero-shot on {data}", title_justify="left", show_header=False)
    summary.add_column("metric")
    summary.add_column("value", justify="right")
    summary.add_row("images", str(report.num_images))
    summary.add_row("classes", str(len(classes)))
    summary.add_row("top-1", f"{100 * report.top1:.1f}%")
    summary.add_row("top-5", f"{100 * report.top5:.1f}%")
    summary.add_row("mean per-class recall", f"{100 * report.mean_per_class_recall:.1f}%")
    per_class = Table(title="per class", title_justify="left")
    for name, justify in [("class", "left"), ("images", "right"), ("correct", "right"),
                          ("recall", "right"), ("precision", "right")]:
        per_class.add_column(name, justify=justify)
    for row in report.per_class():
        per_class.add_row(row["class"], str(row["support"]), str(row["correct"]), _pct(row["recall"]),
                          _pct(row["precision"]))
    print_tables([summary, per_class], output)
    finish(skipped.count)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"
