"""Shared CLI pieces: option aliases, the stderr console, progress drawing, training runs."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

DataOpt = Annotated[str, typer.Option("--data", help="Training data: 'demo', a folder (images + .txt captions, or class sub-folders), a CSV/TSV file, or webdataset tar shards ('shards/{000000..000099}.tar', one .tar, or a folder of them; see `detailclip shard`).")]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto, cpu or cuda[:N].")]
SeedOpt = Annotated[Optional[int], typer.Option("--seed", help="Random seed (data order, augmentation, init, random removal).")]
WorkersOpt = Annotated[Optional[int], typer.Option("--workers", min=0, help="Data-loader worker processes.")]
OutOpt = Annotated[Optional[Path], typer.Option("--out", help="Output folder.")]

# -- the training options `pretrain` and `distill` share ---------------------------------------------
ConfigOpt = Annotated[Optional[Path], typer.Option("--config", help="JSON config file ({\"preset\": ..., \"model\": {...}, \"train\": {...}}).")]
StepsOpt = Annotated[Optional[int], typer.Option("--steps", min=1, help="Training steps.")]
EpochsOpt = Annotated[Optional[float], typer.Option("--epochs", min=0, help="Training length in passes over the data (instead of --steps).")]
TrainBatchOpt = Annotated[Optional[int], typer.Option("--batch-size", help="Images per optimiser step, over all processes under torchrun (each reads an equal share).")]
LrOpt = Annotated[Optional[float], typer.Option("--lr", help="Peak learning rate.")]
WeightDecayOpt = Annotated[Optional[float], typer.Option("--weight-decay", help="AdamW weight decay.")]
WarmupOpt = Annotated[Optional[int], typer.Option("--warmup-steps", min=0, help="Linear learning-rate warm-up steps.")]
KeepOpt = Annotated[Optional[float], typer.Option("--keep-ratio", help="Fraction of patch tokens the student keeps, in (0, 1].")]
RemovalOpt = Annotated[Optional[str], typer.Option("--removal", help="Token removal: attention (teacher scores), random, or none.")]
BlockOpt = Annotated[Optional[int], typer.Option("--block-size", help="Remove whole NxN blocks of patches (1 = single patches).")]
ScoreLayerOpt = Annotated[Optional[str], typer.Option("--score-layer", help="Teacher attention used for scores: mean (all layers), last, or a layer index.")]
NoReconstructOpt = Annotated[bool, typer.Option("--no-reconstruct", help="Switch off pixel reconstruction (no decoder).")]
WRecOpt = Annotated[Optional[float], typer.Option("--w-rec", help="Weight of the reconstruction loss.")]
WPatchOpt = Annotated[Optional[float], typer.Option("--w-patch", help="Weight of the patch distillation loss.")]
WClsOpt = Annotated[Optional[float], typer.Option("--w-cls", help="Weight of the [CLS] distillation loss.")]
LogEveryOpt = Annotated[Optional[int], typer.Option("--log-every", min=1, help="Log metrics every N steps.")]
SaveEveryOpt = Annotated[Optional[int], typer.Option("--save-every", min=1, help="Checkpoint every N steps.")]
MaxBadOpt = Annotated[Optional[float], typer.Option("--max-bad-fraction", help="Stop when more than this fraction of the samples read so far cannot be read (default 0.05); unreadable ones below it are skipped and counted.")]
CompileOpt = Annotated[Optional[bool], typer.Option("--compile/--no-compile", help="torch.compile the transformer blocks (worth it on GPU for long runs; compiling takes a while).")]
PrecisionOpt = Annotated[Optional[str], typer.Option("--precision", help="auto (bf16 on GPU, fp32 on CPU), fp32, bf16, or fp16 (with a loss scaler). On CPU anything but fp32 is far slower.", show_default=False)]
SamplesPerEpochOpt = Annotated[Optional[int], typer.Option("--samples-per-epoch", min=1, help="Tar shards only: the length of an epoch in samples (default: one pass over all of them; more repeats the data in fresh orders).", show_default=False)]
ResumeOpt = Annotated[Optional[Path], typer.Option("--resume", help="Continue the run in this folder from its last checkpoint (--steps may extend it).")]
InitOpt = Annotated[Optional[str], typer.Option("--init", help="Start the towers, image projection and logit scale from this model (its architecture replaces the preset's; decoder and head start fresh): open_clip:NAME with --pretrained (plain ViT CLIP architectures, e.g. ViT-B-32, ViT-B-16), a run folder or a saved model.", show_default=False)]
InitPretrainedOpt = Annotated[Optional[str], typer.Option("--pretrained", help="With --init open_clip:NAME: an open_clip pretrained tag or a local weights file.", show_default=False)]
LockTextOpt = Annotated[bool, typer.Option("--lock-text", help="Freeze the text tower (LiT): it gets no gradient and no update, and stays as --init gave it.")]

AccumOpt = Annotated[Optional[int], typer.Option("--accum-steps", min=1, help="Gradient accumulation: read each step's batch as N micro-batches (less memory, same gradient: the CLIP loss still sees the whole batch's negatives).")]
GradCkptOpt = Annotated[Optional[bool], typer.Option("--grad-checkpointing/--no-grad-checkpointing", help="Recompute the towers' block activations in the backward: less memory, about a third more compute.", show_default=False)]

# What may change when a run is resumed (besides --device and the number of processes).
RESUME_OVERRIDES = {"steps", "workers", "log_every", "save_every", "max_bad_fraction", "compile", "precision",
                    "accum_steps", "grad_checkpointing"}


def given_overrides(params: dict[str, Any]) -> dict[str, Any]:
    """The training settings a command was given: its parameters named like ``TrainConfig`` fields, when set.

    Commands pass their ``locals()``, so every training option needs only its parameter.
    """
    import dataclasses

    from detailclip_cli.core.config import TrainConfig

    names = {f.name for f in dataclasses.fields(TrainConfig)}
    return {k: v for k, v in params.items() if k in names and v is not None}


def epoch_samples(data: str, *, samples_per_epoch: int | None = None, images_only: bool = False) -> int:
    """Samples in one epoch of ``data``, for ``--epochs``: of tar shards (or ``--samples-per-epoch``),
    else what the reader finds (all images, with or without captions, when ``images_only``)."""
    from detailclip_cli.core.data import read_samples
    from detailclip_cli.core.data.shards import epoch_samples as shard_samples
    from detailclip_cli.core.data.shards import streams_shards

    if streams_shards(data, samples_per_epoch=samples_per_epoch or 0):
        return shard_samples(data, samples_per_epoch=samples_per_epoch or 0)
    if images_only:
        from detailclip_cli.core.data.multicrop import image_samples

        return len(image_samples(data, split="train"))
    return len(read_samples(data, split="train"))


def removal_summary(train_cfg) -> str:
    """``removal=attention keep=0.5 block=2`` (or ``removal=none``) for a run's header line."""
    c = train_cfg
    return f"removal={c.removal}" + (f" keep={c.keep_ratio} block={c.block_size}" if c.removal != "none" else "")


def resume_configs(resume: Path, given: dict[str, Any], *, other_options: bool):
    """The configs and settings of the run to resume, with the few allowed overrides applied.

    Args:
        resume: the run folder.
        given: overrides from :func:`given_overrides`.
        other_options: whether options that fix a run's settings (preset, config, switches,
            --epochs ...) were given too, which is an error.

    Returns:
        (model config, training config, the settings recorded in ``run.json``).
    """
    from detailclip_cli.core import config as C
    from detailclip_cli.core.store.run import read_run_settings

    if set(given) - RESUME_OVERRIDES or other_options:
        raise C.ConfigError("--resume continues a run with its own settings; only --steps, --workers, "
                            "--device, --log-every, --save-every, --max-bad-fraction, --compile, --precision, "
                            "--accum-steps and --grad-checkpointing may be given with it")
    model_cfg, train_cfg, settings = read_run_settings(resume)
    return model_cfg, C.TrainConfig.from_dict({**train_cfg.to_dict(), **given}), settings


def new_configs(preset: str | None, config: Path | None, given: dict[str, Any], *, epochs: float | None,
                count_samples: Callable[[], int], preset_option: str = "--preset"):
    """The model and training configs of a new run: a preset or config file, then the overrides.

    Args:
        preset: preset name (default tiny).
        config: a JSON config file (exclusive with ``preset``).
        given: overrides from :func:`given_overrides`.
        epochs: training length in passes over the data, turned into steps.
        count_samples: how many training samples the data has (only called for ``epochs``).
        preset_option: the option that names the preset, for messages.
    """
    from detailclip_cli.core import config as C

    if config is not None:
        if preset:
            raise C.ConfigError(f"give either {preset_option} or --config (a config file may name its preset)")
        model_cfg, train_cfg = C.load_config_file(config)
    else:
        model_cfg, train_cfg = C.load_preset(preset or "tiny")
    if epochs is not None:
        if "steps" in given:
            raise C.ConfigError("give --steps or --epochs, not both")
        per_epoch = count_samples() // given.get("batch_size", train_cfg.batch_size)
        given = {**given, "steps": max(1, round(epochs * per_epoch))}
    return model_cfg, C.TrainConfig.from_dict({**train_cfg.to_dict(), **given})


def default_run_dir(command: str) -> Path:
    """``runs/<command>-<date>-<time>``."""
    return Path("runs") / time.strftime(f"{command}-%Y%m%d-%H%M%S")


def drive(steps: Iterable, *, console, total: int, out_dir: Path, show: tuple[str, ...] = ()) -> None:
    """Iterate a training run, drawing its progress on stderr, and say where the results are.

    A ``CollapseWarning`` from the run becomes one ``warning:`` line on stderr; other warnings
    are shown as Python shows them.

    Args:
        steps: the run's ``StepInfo`` iterator.
        console: the stderr console.
        total: the last step.
        out_dir: the run folder.
        show: ``StepInfo.extra`` figures to show beside the losses.
    """
    import warnings

    from detailclip_cli.core.method.collapse import CollapseWarning

    report = getattr(steps, "data_report", None)
    if report is not None and report.summary():
        console.print(f"data: {report.samples} samples; {report.summary()} (counts in run.json)",
                      style="yellow", markup=False, highlight=False, soft_wrap=True)
    last = None
    with warnings.catch_warnings():
        python_show = warnings.showwarning

        def show_warning(message, category, filename, lineno, file=None, line=None):
            if issubclass(category, CollapseWarning):
                console.print(f"warning: {message}", style="yellow", markup=False, highlight=False, soft_wrap=True)
            else:
                python_show(message, category, filename, lineno, file, line)

        warnings.showwarning = show_warning
        warnings.simplefilter("always", CollapseWarning)  # the run itself warns only once
        with StepProgress(console, total, show=show) as progress, GracefulStop(steps, console):
            for info in steps:
                progress.show(info)
                last = info
    if last is not None:
        skipped = int(last.extra.get("bad_samples", 0))
        console.print(
            f"done: {last.step} steps in {last.elapsed_s:.0f}s, loss {last.losses['loss']:.3f}; "
            f"model in {out_dir}/model.safetensors, metrics in {out_dir}/metrics.jsonl"
            + (f"; {skipped} unreadable samples skipped" if skipped else "")
        )


class GracefulStop:
    """While active, the first Ctrl-C or SIGTERM asks the run to save and stop after the current
    step; a second Ctrl-C stops at once (the previous checkpoint stays intact)."""

    def __init__(self, run, console):
        self.run, self.console, self.saved = run, console, {}

    def _handle(self, signum, frame):
        import signal

        if getattr(self, "asked", False):
            raise KeyboardInterrupt
        self.asked = True
        name = signal.Signals(signum).name
        self.console.print(f"{name}: saving after this step (press Ctrl-C again to stop at once)",
                           markup=False, highlight=False)
        self.run.request_stop()

    def __enter__(self):
        import signal
        import threading

        if hasattr(self.run, "request_stop") and threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.saved[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        import signal

        for sig, handler in self.saved.items():
            signal.signal(sig, handler)
        return False


def is_main_rank() -> bool:
    """False in the processes torchrun starts besides rank 0, which stay quiet (read without torch)."""
    import os

    return os.environ.get("RANK", "0") == "0"


def err_console():
    """A Rich console on stderr: messages and progress never mix with results on stdout.

    Under torchrun only rank 0's console prints; the other processes' is silent.
    """
    from rich.console import Console

    return Console(stderr=True, quiet=not is_main_rank())


def format_stats(info, show: tuple[str, ...] = ()) -> str:
    """One line of a training step's figures: each named loss, the ``show`` extras, lr, throughput."""
    losses = "  ".join(f"{k} {v:.3f}" for k, v in info.losses.items())
    extras = "".join(f"  {k} {info.extra[k]:.4g}" for k in show if k in info.extra)
    return f"{losses}{extras}  lr {info.lr:.2e}  {info.images_per_sec:.0f} img/s"


class StepProgress:
    """A Rich progress bar over training steps with the latest figures on a line below it.

    When stderr is not a terminal (logs, CI) it prints one plain line per logged step instead.
    """

    def __init__(self, console, total: int, show: tuple[str, ...] = ()):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
        from rich.text import Text

        stats = self
        self.console = console
        self.show_keys = show
        self.line = ""

        class _Progress(Progress):
            def get_renderables(self):
                yield self.make_tasks_table(self.tasks)
                yield Text(stats.line, style="dim")

        self.progress = _Progress(
            TextColumn("[progress.description]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
            console=console, disable=not console.is_terminal,
        )
        self.task = self.progress.add_task("train", total=total)

    def __enter__(self):
        self.progress.__enter__()
        return self

    def __exit__(self, *exc):
        return self.progress.__exit__(*exc)

    def show(self, info) -> None:
        self.line = format_stats(info, self.show_keys)
        self.progress.update(self.task, completed=info.step)
        if not self.console.is_terminal:
            self.console.print(f"step {info.step}/{info.total_steps}  {self.line}", soft_wrap=True)
