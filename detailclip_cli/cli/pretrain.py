"""``detailclip pretrain``: train a DetailCLIP model (or a plain-CLIP baseline) from scratch."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from detailclip_cli.cli import options as opts
from detailclip_cli.cli.console import drive, err_console, removal_summary
from detailclip_cli.cli.output import default_run_dir
from detailclip_cli.cli.training import TrainOptions, train_options
from detailclip_cli.core.recipes import DEFAULT_RECIPE, LIST, RECIPES, all_recipes, load_recipe
from detailclip_cli.errors import UsageError


@train_options
def pretrain(
    # -- data
    data: opts.DataOpt = "demo",
    samples_per_epoch: opts.SamplesPerEpochOpt = None,
    max_bad_fraction: opts.MaxBadOpt = None,
    workers: opts.WorkersOpt = None,
    # -- model
    preset: Annotated[Optional[str], typer.Option(
        "--preset", metavar="NAME", rich_help_panel=opts.MODEL, help=opts.preset_help("Model and training preset"))] = None,
    config: opts.ConfigOpt = None,
    init: Annotated[Optional[str], typer.Option(
        "--init", metavar="MODEL", rich_help_panel=opts.MODEL, show_default=False,
        help="Start the towers, image projection and logit scale from this model (its architecture replaces "
        "the preset's; decoder and head start fresh): open_clip:NAME with --pretrained (plain ViT CLIP "
        "architectures, e.g. ViT-B-32, ViT-B-16), a run folder or a saved model.")] = None,
    pretrained: Annotated[Optional[str], typer.Option(
        "--pretrained", metavar="TAG", rich_help_panel=opts.MODEL, show_default=False,
        help="With --init open_clip:NAME: an open_clip pretrained tag or a local weights file.")] = None,
    lock_text: Annotated[bool, typer.Option(
        "--lock-text", metavar="", rich_help_panel=opts.MODEL,
        help="Freeze the text tower (LiT): it gets no gradient and no update, and stays as --init gave it.")] = False,
    no_verify: Annotated[bool, typer.Option(
        "--no-verify", metavar="", rich_help_panel=opts.MODEL,
        help="With --init MODEL: load its weights even if they no longer match the SHA-256 their config.json "
        "records (NaN or Inf weights are refused all the same).")] = False,
    # -- method
    recipe: Annotated[Optional[str], typer.Option(
        "--recipe", metavar="NAME", rich_help_panel=opts.METHOD, show_default=False,
        help=f"The method: {', '.join(RECIPES)} (default {DEFAULT_RECIPE}); `{LIST}` prints what each does. "
        "It sets the switches below; a config file's values and the options given override it.")] = None,
    removal: opts.RemovalOpt = None,
    keep_ratio: opts.KeepOpt = None,
    block_size: opts.BlockOpt = None,
    score_layer: opts.ScoreLayerOpt = None,
    no_distill: Annotated[bool, typer.Option(
        "--no-distill", metavar="", rich_help_panel=opts.METHOD,
        help="Switch off patch/[CLS] self-distillation (no head).")] = False,
    no_reconstruct: opts.NoReconstructOpt = False,
    w_clip: Annotated[Optional[float], typer.Option(
        "--w-clip", metavar="F", rich_help_panel=opts.METHOD, help="Weight of the CLIP loss.")] = None,
    # -- the other loss weights, optimisation, scale, output: shared with distill
    train: TrainOptions = TrainOptions(),
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", metavar="", rich_help_panel=opts.OUTPUT,
        help="Print parameter counts, FLOPs per step and the peak memory of one step, then stop (nothing is "
        "written).")] = False,
) -> None:
    """Pretrain DetailCLIP on image-caption data; writes a run folder.

    [bold]Examples[/bold]

      detailclip pretrain --preset tiny --steps 300 --out runs/demo

      detailclip pretrain --preset tiny --steps 300 --out runs/demo --force   (the old run goes to runs/demo.old-...)

      detailclip pretrain --data ./imgs --recipe clip --out runs/clip

      detailclip pretrain --recipe list

      detailclip pretrain --resume runs/demo --steps 600

      detailclip pretrain --init open_clip:ViT-B-32 --pretrained ./vit-b-32.pt --lock-text --block-size 1

      detailclip pretrain --preset base --batch-size 64 --dry-run

      torchrun --nproc_per_node 4 -m detailclip_cli pretrain --preset small --batch-size 1024 --accum-steps 2

      detailclip pretrain --preset tiny --log-to tensorboard --log-images-every 100 --out runs/tb
    """
    if recipe == LIST:
        return print_recipes()
    if recipe is not None:
        load_recipe(recipe)  # an unknown name fails now, before torch loads (a second or two)
    # The core loads only when a command runs, so --help stays fast.
    from detailclip_cli.core.training.settings import epoch_samples, new_configs, resume_configs

    given = train.overrides(
        samples_per_epoch=samples_per_epoch, max_bad_fraction=max_bad_fraction, workers=workers,
        removal=removal, keep_ratio=keep_ratio, block_size=block_size, score_layer=score_layer, w_clip=w_clip)
    if train.resume is not None:
        model_cfg, train_cfg, settings = resume_configs(
            train.resume, given, other_options=bool(
                preset is not None or config or recipe or no_distill or no_reconstruct or train.epochs is not None
                or init or pretrained or lock_text or train.force or no_verify))
        data, out_dir = settings["data"], train.resume
        lock_text, init_model = bool(settings.get("lock_text", False)), None  # the weights come from the checkpoint
        # The run's recipe stays: its switches are in the recorded configs, its name in run.json.
        settings = {k: v for k, v in settings.items() if k in ("preset", "recipe")}
    else:
        recipe = recipe or DEFAULT_RECIPE
        model_cfg, train_cfg = new_configs(preset, config, given, epochs=train.epochs, recipe=recipe,
                                           count_samples=lambda: epoch_samples(data, samples_per_epoch=samples_per_epoch))
        if no_distill:
            model_cfg.head = None
        if no_reconstruct:
            model_cfg.decoder = None
        out_dir = train.out or default_run_dir("pretrain")
        init_model = None
        if init is not None:
            # imported on use, not at the top: --help must not load torch (start-up time)
            from detailclip_cli.core.store.init_weights import load_init

            model_cfg, init_model = load_init(init, pretrained, model_cfg, verify=not no_verify)
        elif pretrained is not None:
            raise UsageError("--pretrained goes with --init open_clip:NAME")
        elif no_verify:
            raise UsageError("--no-verify goes with --init MODEL (the only model pretrain loads)")
        settings = {"preset": preset or ("tiny" if config is None else None), "recipe": recipe, "command": "pretrain",
                    "init": init, "init_pretrained": pretrained, "lock_text": lock_text}

    loggers = train.check(model_cfg, train_cfg, given, init=init, lock_text=lock_text and train.resume is None)
    if dry_run:
        return report_dry_run(model_cfg, train_cfg, train.device)
    run(model_cfg, train_cfg, data=data, out_dir=Path(out_dir), device=train.device, resume=train.resume is not None,
        settings=settings, init=init_model, lock_text=lock_text, force=train.force, shard=train.shard,
        log_to=train.log_spec(loggers, data))


def print_recipes() -> None:
    """``--recipe list``: each recipe's name and what it does, one line each (stdout)."""
    width = max(map(len, RECIPES))
    for r in all_recipes():
        print(f"{r.name:<{width}}  {r.summary}")


def report_dry_run(model_cfg, train_cfg, device: str) -> None:
    """Measure one step of these configs on random inputs and print what it costs (stdout)."""
    from rich.console import Console
    from rich.table import Table

    # imported on use, not at the top: --help must not load torch (start-up time)
    from detailclip_cli.core.device import resolve_device
    from detailclip_cli.tools.costs import dry_run_in_subprocess

    console = err_console()
    console.print("dry run: one step on random inputs in a fresh process ...", markup=False)
    record = dry_run_in_subprocess(model_cfg, train_cfg, resolve_device(device))
    table = Table(title=f"pretrain --dry-run ({removal_summary(train_cfg)}, batch {record['batch_size']})",
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
        init=None, lock_text: bool = False, force: bool = False, shard: bool = False, log_to=None) -> None:
    """Drive the core training loop and draw its progress on stderr."""
    # imported on use, not at the top: --help must not load torch (start-up time)
    from detailclip_cli.core.training.pretrain import train

    console = err_console()
    steps = train(model_cfg, train_cfg, data=data, out_dir=out_dir, device=device, resume=resume, settings=settings,
                  init=init, lock_text=lock_text, force=force, shard=shard, log_to=log_to)
    mechanisms = [
        *([f"recipe={settings['recipe']}"] if settings.get("recipe") else []),
        removal_summary(train_cfg),
        "distill=" + ("on" if model_cfg.head else "off"),
        "reconstruct=" + ("on" if model_cfg.decoder else "off"),
        *(["simclr=on"] if train_cfg.simclr_term else []),
        *([f"init={settings['init']}"] if settings.get("init") else []),
        *(["text=locked"] if lock_text else []),
    ]
    console.print(f"[bold]detailclip pretrain[/bold] -> {out_dir}  ({', '.join(mechanisms)})")
    drive(steps, console=console, total=train_cfg.steps, out_dir=out_dir)
