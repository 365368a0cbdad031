"""``detailclip distill``: train a student image tower from a teacher, from images alone."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from detailclip_cli.cli import _common as opts

ImagesDataOpt = Annotated[str, typer.Option(
    "--data", help="Training images: 'demo', a folder of images (searched recursively; captions are not "
    "needed), a CSV/TSV file, or webdataset tar shards (a pattern such as 'shards/{000000..000099}.tar', "
    "one .tar, or a folder of them).")]
TeacherOpt = Annotated[Optional[str], typer.Option(
    "--teacher", help="A trained teacher, kept frozen: a run folder, a model folder, or open_clip:NAME. "
    "Without it: self-distillation from an EMA copy of the student (no captions, no text tower).",
    show_default=False)]
TeacherPretrainedOpt = Annotated[Optional[str], typer.Option(
    "--pretrained", help="With --teacher open_clip:NAME: an open_clip pretrained tag or a local weights file.",
    show_default=False)]
StudentOpt = Annotated[Optional[str], typer.Option(
    "--student", help="Student preset: tiny, small or base (default tiny). With --teacher, its text tower "
    "and embedding width are the teacher's.", show_default=False)]
LocalCropsOpt = Annotated[Optional[int], typer.Option(
    "--local-crops", min=0, help="DINO multi-crop: N small local views per image (5-35 % of it) that the "
    "student must map to the teacher's global [CLS] target. Default 0.", show_default=False)]
LocalSizeOpt = Annotated[Optional[int], typer.Option(
    "--local-size", min=1, help="Side of the local views in pixels, a multiple of the patch size. "
    "Default: 3/7 of the image size, rounded up to whole patches.", show_default=False)]


def distill(
    data: ImagesDataOpt = "demo",
    teacher: TeacherOpt = None,
    pretrained: TeacherPretrainedOpt = None,
    student: StudentOpt = None,
    config: opts.ConfigOpt = None,
    out: opts.OutOpt = None,
    local_crops: LocalCropsOpt = None,
    local_size: LocalSizeOpt = None,
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
    no_reconstruct: opts.NoReconstructOpt = False,
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
) -> None:
    """Distil a student from a teacher using images only (captions are not needed); writes a run folder.

    Without --teacher the student learns by self-distillation (EMA teacher, iBOT [CLS] and patch
    losses, attention-guided token removal, pixel reconstruction). With --teacher the frozen
    teacher's attention chooses the tokens the student keeps, and the student matches the
    teacher's image embedding and patch features; the saved student carries the teacher's text
    tower, so zero-shot, attn-map and reconstruct work on it directly.

    The progress line shows the spread of the student's embeddings and the teacher's entropy;
    a warning says when they fall towards collapse.

    [bold]Examples[/bold]

      detailclip distill --data ./imgs --steps 1000 --out runs/self

      detailclip distill --teacher runs/demo --student tiny --config small-student.json --out runs/student

      detailclip distill --teacher open_clip:ViT-B-32 --pretrained openai --data ./imgs --local-crops 6

      detailclip distill --resume runs/student --steps 2000
    """
    given = opts.given_overrides(locals())
    if resume is not None:
        fixed = (teacher, pretrained, student, config, local_crops, local_size, epochs)
        model_cfg, train_cfg, settings = opts.resume_configs(
            resume, given, other_options=no_reconstruct or any(x is not None for x in fixed))
        if settings.get("command") != "distill":
            from detailclip_cli.core.config import ConfigError

            raise ConfigError(f"{resume} is not a distill run (resume it with detailclip {settings.get('command', 'pretrain')})")
        data, out_dir = settings["data"], resume
        teacher, pretrained = settings.get("teacher"), settings.get("pretrained")
        local_crops, local_size = settings.get("local_crops", 0), settings.get("local_size")
        settings = {k: v for k, v in settings.items() if k in ("student",)}
    else:
        model_cfg, train_cfg = opts.new_configs(
            student, config, given, epochs=epochs, preset_option="--student",
            count_samples=lambda: opts.epoch_samples(data, samples_per_epoch=samples_per_epoch, images_only=True))
        if no_reconstruct:
            model_cfg.decoder = None
        out_dir = out or opts.default_run_dir("distill")
        settings = {"student": student or ("tiny" if config is None else None)}

    run(model_cfg, train_cfg, data=data, out_dir=Path(out_dir), device=device, resume=resume is not None,
        teacher=teacher, pretrained=pretrained, local_crops=local_crops or 0, local_size=local_size,
        settings=settings)


def run(model_cfg, train_cfg, *, data, out_dir: Path, device: str, resume: bool, teacher: str | None,
        pretrained: str | None, local_crops: int, local_size: int | None, settings: dict) -> None:
    """Set the distillation up in the core, say what it does, and draw its progress on stderr."""
    from detailclip_cli.core.training.distill import distill as core_distill

    console = opts.err_console()
    steps = core_distill(model_cfg, train_cfg, data=data, out_dir=out_dir, device=device, teacher=teacher,
                         pretrained=pretrained, local_crops=local_crops, local_size=local_size, resume=resume,
                         settings=settings)
    counts = steps.objective.image_param_counts()
    c = train_cfg
    if teacher is None:
        mode = "self-distillation, EMA teacher"
        show = ("spread", "teacher_entropy")
    else:
        mode = (f"frozen teacher {teacher}: image encoder {counts['teacher'] / 1e6:.2f}M params, "
                f"the student's {counts['student'] / 1e6:.2f}M")
        show = ("spread", "teacher_spread")
    mechanisms = [
        opts.removal_summary(c),
        "reconstruct=" + ("on" if model_cfg.decoder else "off"),
        f"local crops={local_crops}",
    ]
    console.print(f"[bold]detailclip distill[/bold] -> {out_dir}  ({mode}; {', '.join(mechanisms)})",
                  highlight=False, soft_wrap=True)
    opts.drive(steps, console=console, total=c.steps, out_dir=out_dir, show=show)
