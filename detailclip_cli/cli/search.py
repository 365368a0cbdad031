"""``detailclip search``: the rows of an embedding file nearest to a text or an image."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from detailclip_cli.cli import options as opts
from detailclip_cli.cli.console import err_console
from detailclip_cli.cli.inputs import load_model
from detailclip_cli.cli.output import ResultFormat, print_tables, write_csv, write_json, write_jsonl
from detailclip_cli.errors import UsageError


def search(
    index: Annotated[Path, typer.Option(
        "--index", metavar="EMB", rich_help_panel=opts.DATA, show_default=False,
        help="An embedding file from `detailclip embed` (.safetensors, .npy, .parquet or .jsonl).")],
    query: Annotated[str, typer.Option(
        "--query", "-q", metavar="TEXT|IMAGE", rich_help_panel=opts.DATA, show_default=False,
        help="A text, or an image file (a query that names an existing image file is read as the image).")],
    top_k: Annotated[int, typer.Option(
        "--top-k", "-k", metavar="N", min=1, rich_help_panel=opts.OUTPUT, help="Results to print.")] = 10,
    model: Annotated[Optional[str], typer.Option(
        "--model", "-m", metavar="MODEL", rich_help_panel=opts.MODEL, show_default=False,
        help="The model that embeds the query (default: the one the index records, else the shipped model).")] = None,
    pretrained: opts.PretrainedOpt = None,
    fmt: Annotated[ResultFormat, typer.Option(
        "--format", "-f", rich_help_panel=opts.OUTPUT,
        help="table for people; json, jsonl (one object per result) or csv.")] = ResultFormat.table,
    output: opts.OutputOpt = None,
    device: opts.DeviceOpt = "auto",
    no_verify: opts.NoVerifyOpt = False,
) -> None:
    """Search an embedding file: the top-k rows most similar to a text or an image.

    The query is embedded by the same model as the index (the one `embed` recorded, unless
    --model says otherwise) and compared by cosine similarity.

    [bold]Examples[/bold]

      detailclip embed photos/ -o photos.safetensors && detailclip search --index photos.safetensors --query "a red circle"

      detailclip search --index photos.safetensors --query photos/cat.jpg --top-k 3 --format jsonl
    """
    console = err_console()
    # imported on use, not at the top: --help must not load torch (start-up time)
    from detailclip_cli.core.data import DataError, is_image_file
    from detailclip_cli.core.use import embfile
    from detailclip_cli.core.use.batching import load_images
    from detailclip_cli.core.use.embed import embed_image_batch, encode_texts

    rows = embfile.read_embeddings(index)
    spec = model if model is not None else (rows.meta.get("model_spec") or None)
    net = load_model(spec, pretrained, device, console, verify=not no_verify)
    as_image = Path(query).expanduser()
    if as_image.is_file() and is_image_file(as_image):
        try:
            q = embed_image_batch(net, load_images([as_image], net))[0]  # (E,)
        except DataError as exc:
            raise UsageError(f"--query {query}: {' '.join(str(exc).split())}") from None
    else:
        if not query.strip():
            raise UsageError("--query is empty: give a text or an image file")
        q = encode_texts(net, [query])[0].cpu()  # (E,)
    hits = embfile.search(rows, q, top_k=top_k)
    records = [{"rank": r, "id": name, "score": round(score, 6)} for r, (name, score) in enumerate(hits, start=1)]
    if fmt == ResultFormat.json:
        write_json({"query": query, "index": str(index), "results": records}, output)
    elif fmt == ResultFormat.jsonl:
        write_jsonl(records, output)
    elif fmt == ResultFormat.csv:
        write_csv(("rank", "id", "score"), [(r["rank"], r["id"], r["score"]) for r in records], output)
    else:
        from rich.table import Table

        table = Table(title=f"search: {query}", title_justify="left")
        table.add_column("#", justify="right")
        table.add_column("id", overflow="fold")
        table.add_column("score", justify="right")
        for r in records:
            table.add_row(str(r["rank"]), r["id"], f"{r['score']:.4f}")
        print_tables([table], output)
