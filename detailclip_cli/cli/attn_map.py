"""``detailclip attn-map``: the [CLS] attention that chooses which tokens pretraining removes."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from detailclip_cli.cli import options as opts
from detailclip_cli.cli.console import err_console, one_line
from detailclip_cli.cli.inputs import ImageFeed, load_probe_model, require_images
from detailclip_cli.cli.output import PictureOrJson, finish, unique_name, write_json
from detailclip_cli.core.store.shipped import model_name


class Heads(str, Enum):
    mean = "mean"
    each = "each"


def attn_map(
    images: opts.ImagesArg = None,
    model: opts.ModelOpt = None,
    pretrained: opts.PretrainedOpt = None,
    layer: opts.LayerOpt = None,
    heads: Annotated[Heads, typer.Option(
        "--heads", rich_help_panel=opts.METHOD,
        help="mean: one map averaged over heads; each: also one map per head.")] = Heads.mean,
    keep_ratio: opts.KeepRatioOpt = 0.5,
    block_size: opts.BlockSizeOpt = None,
    out: Annotated[Path, typer.Option(
        "--out", metavar="DIR", rich_help_panel=opts.OUTPUT,
        help="Folder for the PNGs (one <name>.attn.png per image).")] = Path("attn-maps"),
    fmt: Annotated[PictureOrJson, typer.Option(
        "--format", "-f", rich_help_panel=opts.OUTPUT,
        help="png: pictures in --out (their paths on stdout); json: score grids and kept masks on "
        "stdout.")] = PictureOrJson.png,
    output: opts.OutputOpt = None,
    batch_size: opts.BatchSizeOpt = 32,
    device: opts.DeviceOpt = "auto",
    no_verify: opts.NoVerifyOpt = False,
) -> None:
    """Show where the [CLS] token looks, and which patches token removal keeps.

    The scores are the ones pretraining uses to remove tokens ([CLS]-to-patch attention of the
    chosen layer(s), averaged over heads); the mask is what removal gives at --keep-ratio and
    --block-size. Images are resized (shorter side) and centre-cropped to the model's size.

    [bold]Examples[/bold]

      detailclip attn-map photo.jpg --model runs/demo --out maps/

      detailclip attn-map imgs/ --layer last --heads each --keep-ratio 0.25

      detailclip attn-map photo.jpg --format json > scores.json
    """
    console = err_console()
    paths, failed = require_images(images, console)

    # imported on use, not at the top: --help must not load torch (start-up time)
    from detailclip_cli.core.use.batching import to_pixels
    from detailclip_cli.core.use.probes import attention_maps

    net, layer, block_size = load_probe_model(model, pretrained, device, console, verify=not no_verify,
                                              layer=layer, block_size=block_size, keep_ratio=keep_ratio)
    v = net.cfg.vision

    records, used = [], set()
    feed = ImageFeed(net, paths, batch_size=batch_size, console=console, description="attention")
    for batch in feed:
        maps = attention_maps(net, batch.images, layer=layer, keep_ratio=keep_ratio, block_size=block_size)
        if fmt == PictureOrJson.json:
            for i, path in enumerate(batch.paths):
                record = {"path": str(path), "scores": _rounded(maps.scores[i]),
                          "kept": (~maps.removed[i]).tolist()}
                if heads == Heads.each:
                    record["heads"] = _rounded(maps.per_head[i])
                records.append(record)
            continue
        # imported on use, not at the top: --help must not load numpy and Pillow (start-up time)
        from detailclip_cli.plots import attention_picture

        pixels = to_pixels(batch.images, v.mean, v.std).cpu()
        out.mkdir(parents=True, exist_ok=True)
        for i, path in enumerate(batch.paths):
            picture = attention_picture(
                pixels[i], maps.scores[i].cpu(), maps.removed[i].cpu(),
                per_head=maps.per_head[i].cpu() if heads == Heads.each else None,
                title=f"{one_line(path.name)}  (layer {layer})", keep_ratio=keep_ratio, block_size=block_size,
            )
            target = out / unique_name(path, ".attn.png", used)
            picture.save(target, format="PNG")
            print(target, flush=True)

    if fmt == PictureOrJson.json:
        write_json({
            "model": model_name(model), "layer": layer, "keep_ratio": keep_ratio,
            "block_size": block_size, "image_size": v.image_size, "patch_size": v.patch_size,
            "grid": list(net.visual.grid_size), "images": records,
        }, output)
    finish(failed + feed.failed)


def _rounded(values) -> list:
    """A tensor as nested lists of floats rounded to 6 decimals (compact JSON)."""

    def walk(x):
        return [walk(y) for y in x] if isinstance(x, list) else round(x, 6)

    return walk(values.float().cpu().tolist())
