"""``detailclip reconstruct``: remove tokens and let the model's pixel decoder fill them in."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from detailclip_cli.cli._common import DeviceOpt, SeedOpt, err_console
from detailclip_cli.cli._use import (
    BatchSizeOpt,
    BlockSizeOpt,
    ImageFeed,
    ImagesArg,
    KeepRatioOpt,
    LayerOpt,
    ModelOpt,
    OutputOpt,
    PretrainedOpt,
    TableOrJson,
    finish,
    gather_images,
    load_model,
    one_line,
    print_tables,
    run_defaults,
    unique_name,
    write_json,
)


class Strategy(str, Enum):
    attention = "attention"
    random = "random"


def reconstruct(
    images: ImagesArg = None,
    model: ModelOpt = None,
    pretrained: PretrainedOpt = None,
    strategy: Annotated[Strategy, typer.Option("--strategy", help="Which patches to remove: attention (the model's own [CLS] scores keep the most-attended) or random (seeded).")] = Strategy.attention,
    keep_ratio: KeepRatioOpt = 0.5,
    block_size: BlockSizeOpt = None,
    layer: LayerOpt = None,
    seed: SeedOpt = None,
    out: Annotated[Path, typer.Option("--out", help="Folder for the four-panel PNGs (one <name>.recon.png per image).")] = Path("reconstructions"),
    fmt: Annotated[TableOrJson, typer.Option("--format", "-f", help="table for people, or one json document.")] = TableOrJson.table,
    output: OutputOpt = None,
    batch_size: BatchSizeOpt = 32,
    device: DeviceOpt = "auto",
) -> None:
    """Reconstruct removed patches with the model's pixel decoder.

    Removes tokens as pretraining does, encodes the kept ones, decodes every patch, and maps the
    per-patch normalised predictions back to pixels with each patch's true mean and std. Reports
    MSE and PSNR on the removed patches (pixels in [0, 1]) and writes a four-panel PNG per
    image: original, kept patches, reconstruction, reconstruction with kept patches pasted back.

    [bold]Examples[/bold]

      detailclip reconstruct photo.jpg --model runs/demo --out recon/

      detailclip reconstruct imgs/ --strategy random --seed 1 --keep-ratio 0.25 --format json
    """
    import torch

    from detailclip_cli.core.store.lookup import has_decoder, run_train_settings
    from detailclip_cli.core.use.probes import NoDecoderError, check_removal, reconstruct as reconstruct_images
    from detailclip_cli.plots import RECONSTRUCTION_CAPTION, reconstruction_figure

    console = err_console()
    # Before reading any image: a model without a decoder fails fast, from its config alone.
    if not has_decoder(model):
        raise NoDecoderError(f"{model or 'the shipped model'} has no pixel decoder (trained with "
                                       "--no-reconstruct, or an open_clip model), so it cannot reconstruct")
    paths, failed = gather_images(images, console)
    if not paths:
        finish(failed)
        return

    net = load_model(model, pretrained, device, console)
    layer, block_size = run_defaults(model, net, layer=layer, block_size=block_size)
    check_removal(net, keep_ratio, block_size)
    settings = run_train_settings(model) or {}
    norm_pix = bool(settings.get("norm_pix_loss", True))
    caption = RECONSTRUCTION_CAPTION if norm_pix else "The decoder predicts pixels directly (no per-patch norm)."
    seed = 0 if seed is None else seed
    generator = torch.Generator().manual_seed(seed)

    records, used = [], set()
    out.mkdir(parents=True, exist_ok=True)
    feed = ImageFeed(net, paths, batch_size=batch_size, console=console, description="reconstruct")
    for batch in feed:
        rec = reconstruct_images(net, batch.images, strategy=strategy.value, keep_ratio=keep_ratio,
                                    block_size=block_size, layer=layer, generator=generator, norm_pix=norm_pix)
        for i, path in enumerate(batch.paths):
            mse, psnr = float(rec.mse[i]), float(rec.psnr[i])
            fig = reconstruction_figure(
                rec.original[i].cpu(), rec.kept[i].cpu(), rec.recon[i].cpu(), rec.pasted[i].cpu(),
                title=f"{one_line(path.name)}  ({strategy.value}, keep {keep_ratio:g}, block {block_size})",
                mse=mse, psnr=psnr, caption=caption,
            )
            target = out / unique_name(path, ".recon.png", used)
            fig.savefig(target, dpi=120)
            removed = int(rec.removed[i].sum())
            records.append({"path": str(path), "png": str(target), "removed": removed,
                            "kept": rec.removed[i].numel() - removed, "mse": round(mse, 6),
                            "psnr": round(psnr, 3)})

    def mean(key: str, digits: int) -> float | None:
        return round(sum(r[key] for r in records) / len(records), digits) if records else None

    document = {
        "model": model or "assets/detailclip-tiny", "strategy": strategy.value, "keep_ratio": keep_ratio,
        "block_size": block_size, "seed": seed if strategy == Strategy.random else None,
        "layer": layer if strategy == Strategy.attention else None, "norm_pix": norm_pix,
        "mean_mse": mean("mse", 6), "mean_psnr": mean("psnr", 3),
        "images": records,
    }
    if fmt == TableOrJson.json:
        write_json(document, output)
    else:
        from rich.table import Table

        table = Table(title=f"reconstruction ({strategy.value}, keep {keep_ratio:g}, block {block_size})",
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
