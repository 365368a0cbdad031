"""Options that several commands share, each defined once as an ``Annotated`` alias, and the help
panels that group every command's options.

A choice an option offers comes from :mod:`detailclip_cli.core.choices`, so its help, its
choices and the config validation that checks it never disagree. Training options that set a
config field take ``str`` and leave the check to the config, which names the field in its
message (``removal must be attention, random or none``).

Placeholders (metavars) are short words, as in ``--steps N``, and a choice's names are in its
help: a short name column leaves the help column room to read at 80 columns.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from detailclip_cli.core.choices import Precision, Removal, ScoreLayer, one_of
from detailclip_cli.core.config import PRESETS
from detailclip_cli.errors import UsageError

# -- help panels, in the order a reader looks for them ------------------------------------------------
DATA = "Data"  # what is read
MODEL = "Model"  # which network, or where its weights come from
LABELS = "Labels"  # zero-shot's classes and prompts
METHOD = "Method"  # what the run or the probe does: removal, losses, views
OPTIMISATION = "Optimisation"  # how long, how fast, in what order
SCALE = "Scale"  # where it runs and how it fits: device, precision, memory, batches
OUTPUT = "Output"  # what is written, where and how often


# -- data, device, output ------------------------------------------------------------------------------
DataOpt = Annotated[str, typer.Option(
    "--data", metavar="PATH", rich_help_panel=DATA,
    help="Training data: 'demo' (or 'demo:v5', 0.1's set), a folder (images + .txt captions, or class sub-folders), a CSV/TSV file, "
    "or webdataset tar shards ('shards/{000000..000099}.tar', one .tar, or a folder of them; see "
    "`detailclip shard`), also streamed: 'pipe:cat s-{000..009}.tar', http(s):// URLs, .tar.gz/.tgz.")]
DeviceOpt = Annotated[str, typer.Option(
    "--device", metavar="NAME", rich_help_panel=SCALE, help="auto (cuda, else mps, else cpu), cpu, cuda[:N] or mps.")]
SeedOpt = Annotated[Optional[int], typer.Option(
    "--seed", metavar="N", rich_help_panel=OPTIMISATION,
    help="Random seed (data order, augmentation, init, random removal).")]
WorkersOpt = Annotated[Optional[int], typer.Option(
    "--workers", metavar="N", min=0, rich_help_panel=DATA, help="Data-loader worker processes.")]
EncodeWorkersOpt = Annotated[Optional[int], typer.Option(
    "--workers", metavar="N", min=0, rich_help_panel=DATA, show_default=False,
    help="Worker processes that read the images; with the model on a CPU they also run it, one thread "
    "each. Default: one per core (at most 8), none under 64 images; 0 reads and encodes in the main process.")]
OutOpt = Annotated[Optional[Path], typer.Option(
    "--out", metavar="DIR", rich_help_panel=OUTPUT, help="Output folder.")]
OutputOpt = Annotated[Optional[Path], typer.Option(
    "--output", "-o", metavar="FILE", rich_help_panel=OUTPUT, help="Write results to this file instead of stdout.",
    show_default=False)]

# -- the training options `pretrain` and `distill` share ---------------------------------------------
ConfigOpt = Annotated[Optional[Path], typer.Option(
    "--config", metavar="FILE", rich_help_panel=MODEL,
    help="JSON config file ({\"preset\": ..., \"model\": {...}, \"train\": {...}}).")]
StepsOpt = Annotated[Optional[int], typer.Option(
    "--steps", metavar="N", min=1, rich_help_panel=OPTIMISATION, help="Training steps.")]
EpochsOpt = Annotated[Optional[float], typer.Option(
    "--epochs", metavar="F", min=0, rich_help_panel=OPTIMISATION,
    help="Training length in passes over the data (instead of --steps).")]
TrainBatchOpt = Annotated[Optional[int], typer.Option(
    "--batch-size", metavar="N", rich_help_panel=OPTIMISATION,
    help="Images per optimiser step, over all processes under torchrun (each reads an equal share).")]
LrOpt = Annotated[Optional[float], typer.Option("--lr", metavar="F", rich_help_panel=OPTIMISATION, help="Peak learning rate.")]
WeightDecayOpt = Annotated[Optional[float], typer.Option(
    "--weight-decay", metavar="F", rich_help_panel=OPTIMISATION, help="AdamW weight decay.")]
WarmupOpt = Annotated[Optional[int], typer.Option(
    "--warmup-steps", metavar="N", min=0, rich_help_panel=OPTIMISATION, help="Linear learning-rate warm-up steps.")]
RemovalOpt = Annotated[Optional[str], typer.Option(
    "--removal", metavar="NAME", rich_help_panel=METHOD,
    help=f"Token removal: {one_of(Removal)}; attention keeps the patches the teacher's [CLS] attends to most.")]
KeepOpt = Annotated[Optional[float], typer.Option(
    "--keep-ratio", metavar="F", rich_help_panel=METHOD, help="Fraction of patch tokens the student keeps, in (0, 1].")]
BlockOpt = Annotated[Optional[int], typer.Option(
    "--block-size", metavar="N", rich_help_panel=METHOD, help="Remove whole NxN blocks of patches (1 = single patches).")]
ScoreLayerOpt = Annotated[Optional[str], typer.Option(
    "--score-layer", metavar="LAYER", rich_help_panel=METHOD,
    help=f"Teacher attention used for scores: {', '.join(ScoreLayer)} or a layer index (mean: over all layers).")]
NoReconstructOpt = Annotated[bool, typer.Option(
    "--no-reconstruct", metavar="", rich_help_panel=METHOD, help="Switch off pixel reconstruction (no decoder).")]
WRecOpt = Annotated[Optional[float], typer.Option(
    "--w-rec", metavar="F", rich_help_panel=METHOD, help="Weight of the reconstruction loss.")]
WPatchOpt = Annotated[Optional[float], typer.Option(
    "--w-patch", metavar="F", rich_help_panel=METHOD, help="Weight of the patch distillation loss.")]
WClsOpt = Annotated[Optional[float], typer.Option(
    "--w-cls", metavar="F", rich_help_panel=METHOD, help="Weight of the [CLS] distillation loss.")]
LogEveryOpt = Annotated[Optional[int], typer.Option(
    "--log-every", metavar="N", min=1, rich_help_panel=OUTPUT, help="Log metrics every N steps.")]
SaveEveryOpt = Annotated[Optional[int], typer.Option(
    "--save-every", metavar="N", min=1, rich_help_panel=OUTPUT, help="Checkpoint every N steps.")]
MaxBadOpt = Annotated[Optional[float], typer.Option(
    "--max-bad-fraction", metavar="F", rich_help_panel=DATA,
    help="Stop when more than this fraction of the samples read so far cannot be read (default 0.05); "
    "unreadable ones below it are skipped and counted.")]
SamplesPerEpochOpt = Annotated[Optional[int], typer.Option(
    "--samples-per-epoch", metavar="N", min=1, rich_help_panel=DATA, show_default=False,
    help="Tar shards only: the length of an epoch in samples (default: one pass over all of them; more "
    "repeats the data in fresh orders).")]
# A switch that a config file or a resumed run may have on shows only its positive name; the
# negative one is hidden, so the Scale panel's name column stays narrow.
CompileOpt = Annotated[Optional[bool], typer.Option(
    "--compile", metavar="", rich_help_panel=SCALE, show_default=False,
    help="torch.compile the transformer blocks (worth it on GPU for long runs; compiling takes a while). "
    "--no-compile: off.")]
NoCompileOpt = Annotated[bool, typer.Option("--no-compile", hidden=True)]
PrecisionOpt = Annotated[Optional[str], typer.Option(
    "--precision", metavar="NAME", rich_help_panel=SCALE, show_default=False,
    help=f"{one_of(Precision)}. auto: bf16 on GPU, fp32 on CPU (where anything else is far slower); fp16 "
    "runs with a loss scaler.")]
AccumOpt = Annotated[Optional[int], typer.Option(
    "--accum-steps", metavar="N", min=1, rich_help_panel=SCALE,
    help="Gradient accumulation: read each step's batch as N micro-batches (less memory, same gradient: the "
    "CLIP loss still sees the whole batch's negatives).")]
GradCkptOpt = Annotated[Optional[bool], typer.Option(
    "--grad-checkpointing", metavar="", rich_help_panel=SCALE, show_default=False,
    help="Recompute the towers' block activations in the backward: less memory, about a third more "
    "compute. --no-grad-checkpointing: off.")]
NoGradCkptOpt = Annotated[bool, typer.Option("--no-grad-checkpointing", hidden=True)]
ForceOpt = Annotated[bool, typer.Option(
    "--force", metavar="", rich_help_panel=OUTPUT,
    help="Start a new run in an --out folder that already holds files: they are first moved, untouched, to "
    "a new sibling folder <out>.old-<date>-<time>.")]
ResumeOpt = Annotated[Optional[Path], typer.Option(
    "--resume", metavar="DIR", rich_help_panel=OUTPUT,
    help="Continue the run in this folder from its last checkpoint (--steps may extend it).")]


def switch(on: bool | None, off: bool, name: str) -> bool | None:
    """A switch given as ``--NAME`` or the hidden ``--no-NAME``: True, False, or None (neither)."""
    if on and off:
        raise UsageError(f"give --{name} or --no-{name}, not both")
    return True if on else False if off else None


def preset_help(what: str) -> str:
    """``Model and training preset: tiny, small or base (default tiny).`` for ``what``."""
    return f"{what}: {one_of(PRESETS)} (default tiny)."


# -- the options of the commands that use a trained model -------------------------------------------
ImagesArg = Annotated[Optional[list[str]], typer.Argument(
    help="Image files, folders (searched recursively), globs, or - to read paths from stdin.",
    show_default=False)]
ModelOpt = Annotated[Optional[str], typer.Option(
    "--model", "-m", metavar="MODEL", rich_help_panel=MODEL, show_default=False,
    help="A run folder, a model folder (model.safetensors + config.json), or open_clip:NAME. Default: the "
    "shipped model, detailclip-tiny (package data).")]
PretrainedOpt = Annotated[Optional[str], typer.Option(
    "--pretrained", metavar="TAG", rich_help_panel=MODEL, show_default=False,
    help="With --model open_clip:NAME: an open_clip pretrained tag or a local weights file.")]
ModelArg = Annotated[Optional[str], typer.Argument(
    help="A run folder, a model folder, or open_clip:NAME (default: the shipped model).", show_default=False)]
StrictOpt = Annotated[bool, typer.Option(
    "--strict", rich_help_panel=DATA,
    help="Stop at the first unreadable image (exit 1) instead of skipping and counting it.")]
NoVerifyOpt = Annotated[bool, typer.Option(
    "--no-verify", metavar="", rich_help_panel=MODEL,
    help="Load the weights even if they no longer match the SHA-256 their config.json records (NaN or Inf "
    "weights are refused all the same).")]
BatchSizeOpt = Annotated[int, typer.Option(
    "--batch-size", metavar="N", min=1, rich_help_panel=SCALE, help="Images per forward pass.")]
KeepRatioOpt = Annotated[float, typer.Option(
    "--keep-ratio", metavar="F", min=0.0, max=1.0, rich_help_panel=METHOD, help="Fraction of patch tokens kept, in (0, 1].")]
BlockSizeOpt = Annotated[Optional[int], typer.Option(
    "--block-size", metavar="N", min=1, rich_help_panel=METHOD, show_default=False,
    help="Remove whole NxN blocks of patches. Default: the run's block size (else 2) when it divides the "
    "patch grid, else 1.")]
LayerOpt = Annotated[Optional[str], typer.Option(
    "--layer", metavar="LAYER", rich_help_panel=METHOD, show_default=False,
    help=f"Attention used for scores: {', '.join(ScoreLayer)} or a block index (mean: over all blocks). "
    "Default: the run's --score-layer, else mean.")]
# -- engine and loggers of pretrain / distill (issue 17)
ShardOpt = Annotated[bool, typer.Option(
    "--shard", metavar="", rich_help_panel=SCALE,
    help="Under torchrun: shard parameters, gradients and optimiser state over the processes (FSDP2, per "
    "transformer block) instead of replicating them (DDP), for models that do not fit one device. Checkpoints "
    "are the same files; a run may be resumed with or without it.")]
LogToOpt = Annotated[Optional[str], typer.Option(
    "--log-to", metavar="NAMES", rich_help_panel=OUTPUT, show_default=False,
    help="Also log to tensorboard and/or wandb (comma-separated; pip install 'detailclip[tensorboard]' / "
    "'detailclip[wandb]'): the figures of metrics.jsonl, which stays the record. TensorBoard writes "
    "RUN/tensorboard/; W&B follows WANDB_MODE (offline writes RUN/wandb/).")]
LogImagesEveryOpt = Annotated[int, typer.Option(
    "--log-images-every", metavar="N", min=0, rich_help_panel=OUTPUT,
    help="With --log-to: every N steps, the attention map and reconstruction of a fixed batch of the data's "
    "validation images (0: none).")]
