"""``detailclip distill``: train a student image tower from a teacher, from images alone."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from detailclip_cli.cli import options as opts
from detailclip_cli.cli.console import drive, err_console, removal_summary
from detailclip_cli.cli.output import default_run_dir
from detailclip_cli.cli.training import TrainOptions, train_options
from detailclip_cli.core.choices import DistillMethod, one_of
from detailclip_cli.core.config import ConfigError
from detailclip_cli.errors import UsageError

ImagesDataOpt = Annotated[str, typer.Option(
    "--data", metavar="PATH", rich_help_panel=opts.DATA,
    help="Training images: 'demo', a folder of images (searched recursively; captions are not needed), a "
    "CSV/TSV file, or webdataset tar shards (a pattern such as 'shards/{000000..000099}.tar', one .tar, or "
    "a folder of them).")]
TeacherOpt = Annotated[Optional[str], typer.Option(
    "--teacher", metavar="MODEL", rich_help_panel=opts.MODEL, show_default=False,
    help="A trained teacher, kept frozen: a run folder, a model folder, or open_clip:NAME. Without it: "
    "self-distillation from an EMA copy of the student (no captions, no text tower).")]
TeacherPretrainedOpt = Annotated[Optional[str], typer.Option(
    "--pretrained", metavar="TAG", rich_help_panel=opts.MODEL, show_default=False,
    help="With --teacher open_clip:NAME: an open_clip pretrained tag or a local weights file.")]
NoVerifyTeacherOpt = Annotated[bool, typer.Option(
    "--no-verify", metavar="", rich_help_panel=opts.MODEL,
    help="With --teacher MODEL: load its weights even if they no longer match the SHA-256 their config.json "
    "records (NaN or Inf weights are refused all the same).")]
StudentOpt = Annotated[Optional[str], typer.Option(
    "--student", metavar="NAME", rich_help_panel=opts.MODEL, show_default=False,
    help=opts.preset_help("Student preset") + " With --teacher, its text tower and embedding width are the "
    "teacher's.")]
MethodOpt = Annotated[Optional[str], typer.Option(
    "--method", metavar="NAME", rich_help_panel=opts.METHOD, show_default=False,
    help=f"Without --teacher, the image-only objective: {one_of(DistillMethod)}. ibot (default): DetailCLIP's "
    "image half (iBOT [CLS] and patch losses, removal, reconstruction); dino: [CLS] only, multi-crop; byol: "
    "online predictor and EMA target, no negatives; simclr: NT-Xent, negatives from the batch. dino, byol "
    "and simclr run without token removal or reconstruction unless --removal or --reconstruct asks.")]
ReconstructOpt = Annotated[bool, typer.Option(
    "--reconstruct", metavar="", rich_help_panel=opts.METHOD,
    help="With --method dino, byol or simclr: also reconstruct pixels (a decoder; off for them by default).")]
LocalCropsOpt = Annotated[Optional[int], typer.Option(
    "--local-crops", metavar="N", min=0, rich_help_panel=opts.METHOD, show_default=False,
    help="DINO multi-crop: N small local views per image (5-35 % of it) that the student must map to the "
    "teacher's global [CLS] target (ibot, dino, or a --teacher). Default 6 with --method dino, else 0.")]
LocalSizeOpt = Annotated[Optional[int], typer.Option(
    "--local-size", metavar="N", min=1, rich_help_panel=opts.METHOD, show_default=False,
    help="Side of the local views in pixels, a multiple of the patch size. Default: 3/7 of the image size, "
    "rounded up to whole patches.")]


@train_options
def distill(
    # -- data
    data: ImagesDataOpt = "demo",
    samples_per_epoch: opts.SamplesPerEpochOpt = None,
    max_bad_fraction: opts.MaxBadOpt = None,
    workers: opts.WorkersOpt = None,
    # -- model
    teacher: TeacherOpt = None,
    pretrained: TeacherPretrainedOpt = None,
    no_verify: NoVerifyTeacherOpt = False,
    student: StudentOpt = None,
    config: opts.ConfigOpt = None,
    # -- method
    method: MethodOpt = None,
    removal: opts.RemovalOpt = None,
    keep_ratio: opts.KeepOpt = None,
    block_size: opts.BlockOpt = None,
    score_layer: opts.ScoreLayerOpt = None,
    local_crops: LocalCropsOpt = None,
    local_size: LocalSizeOpt = None,
    no_reconstruct: opts.NoReconstructOpt = False,
    reconstruct: ReconstructOpt = False,
    # -- loss weights, optimisation, scale, output: shared with pretrain
    train: TrainOptions = TrainOptions(),
) -> None:
    """Distil a student from a teacher using images only (captions are not needed); writes a run folder.

    Without --teacher the student learns by self-distillation (EMA teacher, iBOT [CLS] and patch
    losses, attention-guided token removal, pixel reconstruction), or by the objective --method
    names (dino, byol, simclr: the self-supervised methods DetailCLIP builds on). With --teacher the frozen
    teacher's attention chooses the tokens the student keeps, and the student matches the
    teacher's image embedding and patch features; the saved student carries the teacher's text
    tower, so zero-shot, attn-map and reconstruct work on it directly.

    The progress line shows the spread of the student's embeddings and the teacher's entropy;
    a warning says when they fall towards collapse.

    [bold]Examples[/bold]

      detailclip distill --data ./imgs --steps 1000 --out runs/self

      detailclip distill --method byol --data ./imgs --steps 1000 --out runs/byol

      detailclip distill --teacher runs/demo --student tiny --config small-student.json --out runs/student

      detailclip distill --teacher open_clip:ViT-B-32 --pretrained openai --data ./imgs --local-crops 6

      detailclip distill --resume runs/student --steps 2000

      torchrun --nproc_per_node 2 -m detailclip_cli distill --data ./imgs --shard --log-to tensorboard
    """
    # The core loads only when a command runs, so --help stays fast.
    from detailclip_cli.core.training.distill import method_configs
    from detailclip_cli.core.training.settings import epoch_samples, new_configs, resume_configs

    given = train.overrides(
        samples_per_epoch=samples_per_epoch, max_bad_fraction=max_bad_fraction, workers=workers,
        removal=removal, keep_ratio=keep_ratio, block_size=block_size, score_layer=score_layer)
    if no_reconstruct and reconstruct:
        raise ConfigError("give --reconstruct or --no-reconstruct, not both")
    resume = train.resume
    if resume is not None:
        fixed = (teacher, pretrained, method, student, config, local_crops, local_size, train.epochs)
        model_cfg, train_cfg, settings = resume_configs(
            resume, given, other_options=no_reconstruct or reconstruct or train.force or no_verify
            or any(x is not None for x in fixed))
        if settings.get("command") != "distill":
            raise ConfigError(f"{resume} is not a distill run (resume it with detailclip {settings.get('command', 'pretrain')})")
        data, out_dir = settings["data"], resume
        teacher, pretrained = settings.get("teacher"), settings.get("pretrained")
        method = settings.get("method")  # None: a run with a teacher, or one from before --method (ibot)
        local_crops, local_size = settings.get("local_crops", 0), settings.get("local_size")
        settings = {k: v for k, v in settings.items() if k in ("student",)}
    else:
        model_cfg, train_cfg = new_configs(
            student, config, given, epochs=train.epochs, preset_option="--student",
            count_samples=lambda: epoch_samples(data, samples_per_epoch=samples_per_epoch, images_only=True))
        if no_reconstruct:
            model_cfg.decoder = None
        if teacher is None:
            model_cfg, train_cfg = method_configs(method or DistillMethod.ibot, model_cfg, train_cfg,
                                                  removal_chosen=removal is not None, reconstruct=reconstruct)
        out_dir = train.out or default_run_dir("distill")
        settings = {"student": student or ("tiny" if config is None else None)}
        if no_verify and teacher is None:
            raise UsageError("--no-verify goes with --teacher MODEL (the only model distill loads)")

    loggers = train.check(model_cfg, train_cfg, given)
    run(model_cfg, train_cfg, data=data, out_dir=Path(out_dir), device=train.device, resume=resume is not None,
        teacher=teacher, pretrained=pretrained, method=method, local_crops=local_crops, local_size=local_size,
        settings=settings, force=train.force, shard=train.shard, log_to=train.log_spec(loggers, data),
        verify=not no_verify)


def run(model_cfg, train_cfg, *, data, out_dir: Path, device: str, resume: bool, teacher: str | None,
        pretrained: str | None, method: str | None, local_crops: int | None, local_size: int | None,
        settings: dict, force: bool = False, shard: bool = False, log_to=None, verify: bool = True) -> None:
    """Set the distillation up in the core, say what it does, and draw its progress on stderr."""
    # imported on use, not at the top: --help must not load torch (start-up time)
    from detailclip_cli.core.training.distill import default_local_crops
    from detailclip_cli.core.training.distill import distill as core_distill

    console = err_console()
    if local_crops is None:
        local_crops = 0 if teacher is not None else default_local_crops(method)
    steps = core_distill(model_cfg, train_cfg, data=data, out_dir=out_dir, device=device, teacher=teacher,
                         pretrained=pretrained, method=method, local_crops=local_crops, local_size=local_size,
                         resume=resume, settings=settings, force=force, shard=shard, log_to=log_to, verify=verify)
    counts = steps.objective.image_param_counts()
    c = train_cfg
    if teacher is None:
        mode = steps.objective.summary
        show = ("spread", "teacher_entropy")  # the entropy only where a teacher has a distribution
    else:
        mode = (f"frozen teacher {teacher}: image encoder {counts['teacher'] / 1e6:.2f}M params, "
                f"the student's {counts['student'] / 1e6:.2f}M")
        show = ("spread", "teacher_spread")
    mechanisms = [
        removal_summary(c),
        "reconstruct=" + ("on" if model_cfg.decoder else "off"),
        f"local crops={local_crops}",
    ]
    console.print(f"[bold]detailclip distill[/bold] -> {out_dir}  ({mode}; {', '.join(mechanisms)})",
                  highlight=False, soft_wrap=True)
    drive(steps, console=console, total=c.steps, out_dir=out_dir, show=show)
