"""``detailclip info``: architecture, parameter counts, training settings and provenance of a model."""

from __future__ import annotations

from typing import Annotated

import typer

from detailclip_cli.cli import options as opts
from detailclip_cli.cli.output import TableOrJson, print_tables, write_json


def info(
    model: opts.ModelArg = None,
    pretrained: opts.PretrainedOpt = None,
    fmt: Annotated[TableOrJson, typer.Option(
        "--format", "-f", rich_help_panel=opts.OUTPUT, help="table for people, json for scripts.")] = TableOrJson.table,
    output: opts.OutputOpt = None,
    no_verify: opts.NoVerifyOpt = False,
) -> None:
    """Describe a model: architecture, parameters per part, training settings, provenance.

    [bold]Examples[/bold]

      detailclip info runs/demo

      detailclip info open_clip:ViT-B-32 --pretrained ./vit-b-32.pt --format json
    """
    # imported on use, not at the top: --help must not load torch (start-up time)
    from detailclip_cli.core.store.info import model_info

    record = model_info(model, pretrained=pretrained, verify=not no_verify)
    if fmt is TableOrJson.json:
        write_json(record, output)
    else:
        print_tables(_tables(record), output)


def _tables(record: dict) -> list:
    from rich.table import Table

    def table(title: str, rows: list[tuple[str, str]]) -> Table:
        t = Table(title=title, title_justify="left", show_header=False)
        t.add_column(style="bold")
        t.add_column(overflow="fold")
        for key, value in rows:
            t.add_row(key, value)
        return t

    arch = record["architecture"]
    v, t = arch["vision"], arch["text"]
    rows = [
        ("model", f"{record['model']} ({record['kind']})"),
        ("detailclip", record["detailclip_version"]),
        ("image tower", f"ViT {v['depth']} x {v['width']} ({v['heads']} heads), {v['image_size']} px, "
                        f"patch {v['patch_size']}, {v.get('stem', 'patch')} stem"),
        ("text tower", f"{t['layers']} x {t['width']} ({t['heads']} heads), context {t['context_length']}, "
                       f"vocabulary {t['vocab_size']}"),
        ("embedding", str(arch["embed_dim"])),
        ("decoder", _describe(arch.get("decoder"), "depth", "width")),
        ("distillation head", _describe(arch.get("head"), "out_dim", "hidden_dim")),
    ]
    tables = [table("architecture", rows),
              table("parameters", [(k, f"{n:,}") for k, n in record["parameters"].items()])]
    if record["weights"]:
        w = record["weights"]
        dtypes = ", ".join(f"{n} {d}" for d, n in w["tensors_by_dtype"].items())
        tables.append(table("weights", [("file", w["file"]), ("size", f"{w['bytes'] / 1e6:.1f} MB"),
                                        ("tensors", dtypes), ("sha256", w["sha256"])]))
    for title in ("training", "provenance"):
        if record[title]:
            tables.append(table(title, [(k, _short(v)) for k, v in record[title].items() if v is not None]))
    return tables


def _describe(part: dict | None, *keys: str) -> str:
    return "none" if not part else ", ".join(f"{k} {part[k]}" for k in keys)


def _short(value) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k} {_short(v)}" for k, v in value.items())
    return f"{value:.4g}" if isinstance(value, float) else str(value)
