"""``detailclip pretrain``: train a DetailCLIP model (or a plain-CLIP baseline) from scratch."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from detailclip_cli.cli._common import DataOpt, DeviceOpt, OutOpt, SeedOpt, WorkersOpt, err_console, StepProgress


def pretrain(
    data: DataOpt = "demo",
    preset: Annotated[Optional[str], typer.Option("--preset", help="Model and training preset: tiny, small or base (default tiny).")] = None,
    config: Annotated[Optional[Path], typer.Option("--config", help="JSON config file ({\"preset\": ..., \"model\": {...}, \"train\": {...}}).")] = None,
    out: OutOpt = None,
    steps: Annotated[Optional[int], typer.Option("--steps", min=1, help="Training steps.")] = None,
    epochs: Annotated[Optional[float], typer.Option("--epochs", min=0, help="Training length in passes over the data (instead of --steps).")] = None,
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", help="Images per step.")] = None,
    lr: Annotated[Optional[float], typer.Option("--lr", help="Peak learning rate.")] = None,
    weight_decay: Annotated[Optional[float], typer.Option("--weight-decay", help="AdamW weight decay.")] = None,
    warmup_steps: Annotated[Optional[int], typer.Option("--warmup-steps", min=0, help="Linear learning-rate warm-up steps.")] = None,
    keep_ratio: Annotated[Optional[float], typer.Option("--keep-ratio", help="Fraction of patch tokens the student keeps, in (0, 1].")] = None,
    removal: Annotated[Optional[str], typer.Option("--removal", help="Token removal: attention (teacher scores), random, or none.")] = None,
    block_size: Annotated[Optional[int], typer.Option("--block-size", help="Remove whole NxN blocks of patches (1 = single patches).")] = None,
    score_layer: Annotated[Optional[str], typer.Option("--score-layer", help="Teacher attention used for scores: mean (all layers), last, or a layer index.")] = None,
    no_distill: Annotated[bool, typer.Option("--no-distill", help="Switch off patch/[CLS] self-distillation (no head).")] = False,
    no_reconstruct: Annotated[bool, typer.Option("--no-reconstruct", help="Switch off pixel reconstruction (no decoder).")] = False,
    w_clip: Annotated[Optional[float], typer.Option("--w-clip", help="Weight of the CLIP loss.")] = None,
    w_rec: Annotated[Optional[float], typer.Option("--w-rec", help="Weight of the reconstruction loss.")] = None,
    w_patch: Annotated[Optional[float], typer.Option("--w-patch", help="Weight of the patch distillation loss.")] = None,
    w_cls: Annotated[Optional[float], typer.Option("--w-cls", help="Weight of the [CLS] distillation loss.")] = None,
    seed: SeedOpt = None,
    device: DeviceOpt = "auto",
    workers: WorkersOpt = None,
    log_every: Annotated[Optional[int], typer.Option("--log-every", min=1, help="Log metrics every N steps.")] = None,
    save_every: Annotated[Optional[int], typer.Option("--save-every", min=1, help="Checkpoint every N steps.")] = None,
    resume: Annotated[Optional[Path], typer.Option("--resume", help="Continue the run in this folder from its last checkpoint (--steps may extend it).")] = None,
) -> None:
    """Pretrain DetailCLIP on image-caption data; writes a run folder.

    [bold]Examples[/bold]

      detailclip pretrain --preset tiny --steps 300 --out runs/demo

      detailclip pretrain --data ./imgs --removal none --no-distill --no-reconstruct --out runs/clip

      detailclip pretrain --resume runs/demo --steps 600
    """
    from detailclip_cli.core import config as C

    overrides = {
        "steps": steps, "batch_size": batch_size, "lr": lr, "weight_decay": weight_decay,
        "warmup_steps": warmup_steps, "keep_ratio": keep_ratio, "removal": removal,
        "block_size": block_size, "score_layer": score_layer, "w_clip": w_clip, "w_rec": w_rec,
        "w_patch": w_patch, "w_cls": w_cls, "seed": seed, "workers": workers,
        "log_every": log_every, "save_every": save_every,
    }
    given = {k: v for k, v in overrides.items() if v is not None}

    if resume is not None:
        from detailclip_cli.core.train import read_run_settings

        allowed = {"steps", "workers", "log_every", "save_every"}
        if set(given) - allowed or preset or config or no_distill or no_reconstruct or epochs:
            raise C.ConfigError("--resume continues a run with its own settings; only --steps, --workers, "
                                "--device, --log-every and --save-every may be given with it")
        model_cfg, train_cfg, settings = read_run_settings(resume)
        train_cfg = C.TrainConfig.from_dict({**train_cfg.to_dict(), **given})
        data, out_dir = settings["data"], resume
        settings = {k: v for k, v in settings.items() if k in ("preset",)}
    else:
        if config is not None:
            model_cfg, train_cfg = C.load_config_file(config)
            if preset:
                raise C.ConfigError("give either --preset or --config (a config file may name its preset)")
        else:
            model_cfg, train_cfg = C.load_preset(preset or "tiny")
        if no_distill:
            model_cfg.head = None
        if no_reconstruct:
            model_cfg.decoder = None
        if epochs is not None:
            if steps is not None:
                raise C.ConfigError("give --steps or --epochs, not both")
            from detailclip_cli.core.data import read_samples

            per_epoch = len(read_samples(data, split="train")) // given.get("batch_size", train_cfg.batch_size)
            given["steps"] = max(1, round(epochs * per_epoch))
        train_cfg = C.TrainConfig.from_dict({**train_cfg.to_dict(), **given})
        out_dir = out or Path("runs") / time.strftime("pretrain-%Y%m%d-%H%M%S")
        settings = {"preset": preset or ("tiny" if config is None else None), "command": "pretrain"}

    run(model_cfg, train_cfg, data=data, out_dir=Path(out_dir), device=device, resume=resume is not None,
        settings=settings)


def run(model_cfg, train_cfg, *, data, out_dir: Path, device: str, resume: bool, settings: dict) -> None:
    """Drive the core training loop and draw its progress on stderr."""
    from detailclip_cli.core.train import train

    console = err_console()
    steps = train(model_cfg, train_cfg, data=data, out_dir=out_dir, device=device, resume=resume, settings=settings)
    mechanisms = [
        f"removal={train_cfg.removal}" + (f" keep={train_cfg.keep_ratio} block={train_cfg.block_size}" if train_cfg.removal != "none" else ""),
        "distill=" + ("on" if model_cfg.head else "off"),
        "reconstruct=" + ("on" if model_cfg.decoder else "off"),
    ]
    console.print(f"[bold]detailclip pretrain[/bold] -> {out_dir}  ({', '.join(mechanisms)})")
    last = None
    with StepProgress(console, train_cfg.steps) as progress:
        for info in steps:
            progress.show(info)
            last = info
    if last is not None:
        console.print(
            f"done: {last.step} steps in {last.elapsed_s:.0f}s, loss {last.losses['loss']:.3f}; "
            f"model in {out_dir}/model.safetensors, metrics in {out_dir}/metrics.jsonl"
        )
