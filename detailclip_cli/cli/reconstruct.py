"""``detailclip reconstruct``: remove tokens and let the model's pixel decoder fill them in."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, Optional

import typer

from detailclip_cli.cli import options as opts
from detailclip_cli.cli.console import err_console, one_line
from detailclip_cli.cli.inputs import ImageFeed, load_probe_model, require_images
from detailclip_cli.cli.output import (
    TableOrJson,
    finish,
    print_tables,
    unique_name,
    write_json,
)
from detailclip_cli.core.choices import PROBE_REMOVALS, Removal
from detailclip_cli.core.config import check_seed
from detailclip_cli.errors import UsageError
from detailclip_cli.core.store.shipped import model_name

# --removal offers the removal a probe can show; the choices are read from the core.
ProbeRemoval = Optional[Literal[PROBE_REMOVALS]]  # type: ignore[valid-type]


def reconstruct(
    images: opts.ImagesArg = None,
    model: opts.ModelOpt = None,
    pretrained: opts.PretrainedOpt = None,
    removal: Annotated[ProbeRemoval, typer.Option(
        "--removal", rich_help_panel=opts.METHOD, show_default=False,
        help="Which patches to remove: attention (the model's own [CLS] scores keep the most-attended, the "
        "default) or random (seeded).")] = None,
    # The name this option had before it was --removal, as on pretrain; kept so scripts still work.
    strategy: Annotated[ProbeRemoval, typer.Option("--strategy", hidden=True)] = None,
    keep_ratio: opts.KeepRatioOpt = 0.5,
    block_size: opts.BlockSizeOpt = None,
    layer: opts.LayerOpt = None,
    seed: Annotated[Optional[int], typer.Option(
        "--seed", metavar="N", rich_help_panel=opts.METHOD, show_default=False,
        help="Seed of --removal random (default 0).")] = None,
    out: Annotated[Path, typer.Option(
        "--out", metavar="DIR", rich_help_panel=opts.OUTPUT,
        help="Folder for the four-panel PNGs (one <name>.recon.png per image).")] = Path("reconstructions"),
    fmt: Annotated[TableOrJson, typer.Option(
        "--format", "-f", rich_help_panel=opts.OUTPUT,
        help="table for people, or one json document.")] = TableOrJson.table,
    output: opts.OutputOpt = None,
    batch_size: opts.BatchSizeOpt = 32,
    device: opts.DeviceOpt = "auto",
    no_verify: opts.NoVerifyOpt = False,
) -> None:
    """Reconstruct removed patches with the model's pixel decoder.

    Removes tokens as pretraining does, encodes the kept ones, decodes every patch, and maps the
    per-patch normalised predictions back to pixels with each patch's true mean and std. Reports
    MSE and PSNR on the removed patches (pixels in [0, 1]) and writes a four-panel PNG per
    image: original, kept patches, reconstruction, reconstruction with kept patches pasted back.

    [bold]Examples[/bold]

      detailclip reconstruct photo.jpg --model runs/demo --out recon/

      detailclip reconstruct imgs/ --removal random --seed 1 --keep-ratio 0.25 --format json
    """
    import torch

    # imported on use, not at the top: --help must not load torch (start-up time)
    from detailclip_cli.core.store.lookup import has_decoder, run_train_settings
    from detailclip_cli.core.use.probes import NoDecoderError
    from detailclip_cli.core.use.probes import reconstruct as reconstruct_images
    from detailclip_cli.plots import RECONSTRUCTION_CAPTION, reconstruction_picture

    if removal is not None and strategy is not None and removal != strategy:
        raise UsageError("give --removal or its old name --strategy, not both")
    removal = Removal(removal or strategy or Removal.attention)
    seed = check_seed(0 if seed is None else seed)
    console = err_console()
    # Before reading any image: a model without a decoder fails fast, from its config alone.
    if not has_decoder(model):
        raise NoDecoderError(f"{model or 'the shipped model'} has no pixel decoder (trained with "
                                       "--no-reconstruct, or an open_clip model), so it cannot reconstruct")
    paths, failed = require_images(images, console)

    net, layer, block_size = load_probe_model(model, pretrained, device, console, verify=not no_verify,
                                              layer=layer, block_size=block_size, keep_ratio=keep_ratio)
    settings = run_train_settings(model) or {}
    norm_pix = bool(settings.get("norm_pix_loss", True))
    caption = RECONSTRUCTION_CAPTION if norm_pix else "The decoder predicts pixels directly (no per-patch norm)."
    generator = torch.Generator().manual_seed(seed)

    records, used = [], set()
    out.mkdir(parents=True, exist_ok=True)
    feed = ImageFeed(net, paths, batch_size=batch_size, console=console, description="reconstruct")
    for batch in feed:
        rec = reconstruct_images(net, batch.images, removal=removal.value, keep_ratio=keep_ratio,
                                    block_size=block_size, layer=layer, generator=generator, norm_pix=norm_pix)
        for i, path in enumerate(batch.paths):
            mse, psnr = float(rec.mse[i]), float(rec.psnr[i])
            picture = reconstruction_picture(
                rec.original[i].cpu(), rec.kept[i].cpu(), rec.pred[i].cpu(), rec.pasted[i].cpu(),
                title=f"{one_line(path.name)}  ({removal.value}, keep {keep_ratio:g}, block {block_size})",
                mse=mse, psnr=psnr, caption=caption,
            )
            target = out / unique_name(path, ".recon.png", used)
            picture.save(target, format="PNG")
            removed = int(rec.removed[i].sum())
            records.append({"path": str(path), "png": str(target), "removed": removed,
                            "kept": rec.removed[i].numel() - removed, "mse": round(mse, 6),
                            "psnr": round(psnr, 3)})

    def mean(key: str, digits: int) -> float | None:
        return round(sum(r[key] for r in records) / len(records), digits) if records else None

    document = {
        "model": model_name(model), "strategy": removal.value, "keep_ratio": keep_ratio,
        "block_size": block_size, "seed": seed if removal == Removal.random else None,
        "layer": layer if removal == Removal.attention else None, "norm_pix": norm_pix,
        "mean_mse": mean("mse", 6), "mean_psnr": mean("psnr", 3),
        "images": records,
    }
    if fmt == TableOrJson.json:
        write_json(document, output)
    elif records:  # every input failed: each is named on stderr, and an empty table says nothing more
        from rich.table import Table

        table = Table(title=f"reconstruction ({removal.value}, keep {keep_ratio:g}, block {block_size})",
                      title_justify="left")
        table.add_column("image", overflow="fold")
        table.add_column("removed", justify="right")
        table.add_column("MSE", justify="right")
        table.add_column("PSNR dB", justify="right")
        table.add_column("picture", overflow="fold", style="dim")
        for r in records:
            table.add_row(r["path"], f"{r['removed']}/{r['removed'] + r['kept']}", f"{r['mse']:.4f}",
                          f"{r['psnr']:.1f}", r["png"])
        print_tables([table], output)
    finish(failed + feed.failed)
