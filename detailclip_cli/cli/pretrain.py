"""``detailclip pretrain``: train a DetailCLIP model (or a plain-CLIP baseline) from scratch."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from detailclip_cli.cli import _common as opts


def pretrain(
    data: opts.DataOpt = "demo",
    preset: Annotated[Optional[str], typer.Option("--preset", help="Model and training preset: tiny, small or base (default tiny).")] = None,
    config: opts.ConfigOpt = None,
    out: opts.OutOpt = None,
    steps: opts.StepsOpt = None,
    epochs: opts.EpochsOpt = None,
    batch_size: opts.TrainBatchOpt = None,
    lr: opts.LrOpt = None,
    weight_decay: opts.WeightDecayOpt = None,
    warmup_steps: opts.WarmupOpt = None,
    keep_ratio: opts.KeepOpt = None,
    removal: opts.RemovalOpt = None,
    block_size: opts.BlockOpt = None,
    score_layer: opts.ScoreLayerOpt = None,
    no_distill: Annotated[bool, typer.Option("--no-distill", help="Switch off patch/[CLS] self-distillation (no head).")] = False,
    no_reconstruct: opts.NoReconstructOpt = False,
    w_clip: Annotated[Optional[float], typer.Option("--w-clip", help="Weight of the CLIP loss.")] = None,
    w_rec: opts.WRecOpt = None,
    w_patch: opts.WPatchOpt = None,
    w_cls: opts.WClsOpt = None,
    seed: opts.SeedOpt = None,
    device: opts.DeviceOpt = "auto",
    workers: opts.WorkersOpt = None,
    log_every: opts.LogEveryOpt = None,
    save_every: opts.SaveEveryOpt = None,
    max_bad_fraction: opts.MaxBadOpt = None,
    compile: opts.CompileOpt = None,
    precision: opts.PrecisionOpt = None,
    samples_per_epoch: opts.SamplesPerEpochOpt = None,
    accum_steps: opts.AccumOpt = None,
    grad_checkpointing: opts.GradCkptOpt = None,
    resume: opts.ResumeOpt = None,
    init: opts.InitOpt = None,
    pretrained: opts.InitPretrainedOpt = None,
    lock_text: opts.LockTextOpt = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print parameter counts, FLOPs per step and the peak memory of one step, then stop (nothing is written).")] = False,
) -> None:
    """Pretrain DetailCLIP on image-caption data; writes a run folder.

    [bold]Examples[/bold]

      detailclip pretrain --preset tiny --steps 300 --out runs/demo

      detailclip pretrain --data ./imgs --removal none --no-distill --no-reconstruct --out runs/clip

      detailclip pretrain --resume runs/demo --steps 600

      detailclip pretrain --init open_clip:ViT-B-32 --pretrained ./vit-b-32.pt --lock-text --block-size 1

      detailclip pretrain --preset base --batch-size 64 --dry-run

      torchrun --nproc_per_node 4 -m detailclip_cli pretrain --preset small --batch-size 1024 --accum-steps 2
    """
    given = opts.given_overrides(locals())
    if resume is not None:
        model_cfg, train_cfg, settings = opts.resume_configs(
            resume, given, other_options=bool(preset or config or no_distill or no_reconstruct or epochs
                                              or init or pretrained or lock_text))
        data, out_dir = settings["data"], resume
        lock_text, init_model = bool(settings.get("lock_text", False)), None  # the weights come from the checkpoint
        settings = {k: v for k, v in settings.items() if k in ("preset",)}
    else:
        model_cfg, train_cfg = opts.new_configs(preset, config, given, epochs=epochs,
                                                count_samples=lambda: opts.epoch_samples(data, samples_per_epoch=samples_per_epoch))
        if no_distill:
            model_cfg.head = None
        if no_reconstruct:
            model_cfg.decoder = None
        out_dir = out or opts.default_run_dir("pretrain")
        init_model = None
        if init is not None:
            from detailclip_cli.core.store.init_weights import load_init

            model_cfg, init_model = load_init(init, pretrained, model_cfg)
        elif pretrained is not None:
            from detailclip_cli.errors import UsageError

            raise UsageError("--pretrained goes with --init open_clip:NAME")
        settings = {"preset": preset or ("tiny" if config is None else None), "command": "pretrain",
                    "init": init, "init_pretrained": pretrained, "lock_text": lock_text}

    if dry_run:
        return report_dry_run(model_cfg, train_cfg, device)
    run(model_cfg, train_cfg, data=data, out_dir=Path(out_dir), device=device, resume=resume is not None,
        settings=settings, init=init_model, lock_text=lock_text)


def report_dry_run(model_cfg, train_cfg, device: str) -> None:
    """Measure one step of these configs on random inputs and print what it costs (stdout)."""
    from rich.console import Console
    from rich.table import Table

    from detailclip_cli.tools.bench import dry_run_in_subprocess
    from detailclip_cli.core.device import resolve_device

    console = opts.err_console()
    console.print("dry run: one step on random inputs in a fresh process ...", markup=False)
    record = dry_run_in_subprocess(model_cfg, train_cfg, resolve_device(device))
    table = Table(title=f"pretrain --dry-run ({opts.removal_summary(train_cfg)}, batch {record['batch_size']})",
                  title_justify="left", show_header=False)
    table.add_column(style="bold")
    table.add_column(justify="right")
    for part, n in record["parameters"].items():
        table.add_row(f"parameters: {part}", f"{n:,}")
    table.add_row("GFLOP per step (forward + backward)", f"{record['gflop_per_step']:,}")
    table.add_row("memory: built model", f"{record['model_mib']:,.0f} MiB")
    table.add_row("memory: a step's peak on top", f"{record['step_peak_mib']:,.0f} MiB")
    Console().print(table)


def run(model_cfg, train_cfg, *, data, out_dir: Path, device: str, resume: bool, settings: dict,
        init=None, lock_text: bool = False) -> None:
    """Drive the core training loop and draw its progress on stderr."""
    from detailclip_cli.core.training.pretrain import train

    console = opts.err_console()
    steps = train(model_cfg, train_cfg, data=data, out_dir=out_dir, device=device, resume=resume, settings=settings,
                  init=init, lock_text=lock_text)
    mechanisms = [
        opts.removal_summary(train_cfg),
        "distill=" + ("on" if model_cfg.head else "off"),
        "reconstruct=" + ("on" if model_cfg.decoder else "off"),
        *([f"init={settings['init']}"] if settings.get("init") else []),
        *(["text=locked"] if lock_text else []),
    ]
    console.print(f"[bold]detailclip pretrain[/bold] -> {out_dir}  ({', '.join(mechanisms)})")
    opts.drive(steps, console=console, total=train_cfg.steps, out_dir=out_dir)
