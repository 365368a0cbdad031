"""What the training commands (``pretrain``, ``distill``) share: their common options, gathered in
one :class:`TrainOptions`, the config overrides those give, and the checks and loggers a run is
set up with.

Typer reads a command's options from its signature, so a group of options cannot be passed as
one parameter; :func:`train_options` lists the fields of :class:`TrainOptions` in the
command's signature where its ``train`` parameter stands (``--help`` and docs/cli.md show them
in that place), and gathers the values given back into ``train``.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any, get_type_hints

from detailclip_cli.cli import options as opts
from detailclip_cli.cli.console import err_console, say


@dataclass(frozen=True)
class TrainOptions:
    """The options both training commands take, in the order their ``--help`` lists them; each
    field is a Typer option (its ``Annotated`` alias from :mod:`detailclip_cli.cli.options`) with
    its default."""

    # -- method: loss weights
    w_rec: opts.WRecOpt = None
    w_patch: opts.WPatchOpt = None
    w_cls: opts.WClsOpt = None
    # -- optimisation
    steps: opts.StepsOpt = None
    epochs: opts.EpochsOpt = None
    batch_size: opts.TrainBatchOpt = None
    lr: opts.LrOpt = None
    weight_decay: opts.WeightDecayOpt = None
    warmup_steps: opts.WarmupOpt = None
    seed: opts.SeedOpt = None
    # -- scale
    device: opts.DeviceOpt = "auto"
    precision: opts.PrecisionOpt = None
    accum_steps: opts.AccumOpt = None
    grad_checkpointing: opts.GradCkptOpt = None
    no_grad_checkpointing: opts.NoGradCkptOpt = False
    compile: opts.CompileOpt = None
    no_compile: opts.NoCompileOpt = False
    shard: opts.ShardOpt = False
    # -- output
    out: opts.OutOpt = None
    force: opts.ForceOpt = False
    resume: opts.ResumeOpt = None
    log_every: opts.LogEveryOpt = None
    save_every: opts.SaveEveryOpt = None
    log_to: opts.LogToOpt = None
    log_images_every: opts.LogImagesEveryOpt = 0

    def overrides(self, **more: Any) -> dict[str, Any]:
        """The ``TrainConfig`` fields set on the command line (:func:`~detailclip_cli.core.training.settings.overrides`):
        ``more``, the command's own options that set one, then those of these options that do.

        Raises:
            UsageError: a switch given both ways (``--compile`` and ``--no-compile``).
        """
        # imported on use, not at the top: --help must not load torch (start-up time)
        from detailclip_cli.core.training.settings import overrides

        return overrides(
            **more,
            w_rec=self.w_rec, w_patch=self.w_patch, w_cls=self.w_cls,
            steps=self.steps, batch_size=self.batch_size, lr=self.lr, weight_decay=self.weight_decay,
            warmup_steps=self.warmup_steps, seed=self.seed,
            precision=self.precision, accum_steps=self.accum_steps,
            grad_checkpointing=opts.switch(self.grad_checkpointing, self.no_grad_checkpointing, "grad-checkpointing"),
            compile=opts.switch(self.compile, self.no_compile, "compile"),
            log_every=self.log_every, save_every=self.save_every,
        )

    def check(self, model_cfg, train_cfg, given: dict[str, Any], **context: Any) -> tuple[str, ...]:
        """Every setting checked in one place, before any work (a resumed run's too: --steps may
        change): the loggers --log-to names, then ``check_run(model_cfg, train_cfg, given,
        **context)``, whose warnings go to stderr.

        Returns:
            The loggers (:func:`~detailclip_cli.core.training.loggers.parse_log_to`).
        """
        # imported on use, not at the top: --help must not load torch (start-up time)
        from detailclip_cli.core.training.loggers import parse_log_to
        from detailclip_cli.core.training.settings import check_run

        loggers = parse_log_to(self.log_to)  # an unknown or absent logger fails now, before any work
        console = err_console()
        for warning in check_run(model_cfg, train_cfg, given, **context):
            say(console, f"warning: {warning}", style="yellow")
        return loggers

    def log_spec(self, loggers: tuple[str, ...], data):
        """The run's ``LogTo``: the loggers, with the pictures of ``data``'s fixed batch every
        ``--log-images-every`` steps."""
        # imported on use, not at the top: --help must not load torch (start-up time)
        from detailclip_cli.core.training.loggers import LogTo
        from detailclip_cli.tools.pictures import training_pictures

        every = self.log_images_every
        pictures = training_pictures(data) if loggers and every else None
        return LogTo(names=loggers, pictures=pictures, pictures_every=every)


def train_options(command: Callable[..., None]) -> Callable[..., None]:
    """``command`` with the options of :class:`TrainOptions` where its ``train`` parameter stands.

    The signature Typer reads lists each field of :class:`TrainOptions` in place of ``train``;
    a call passes the values of those options to ``command`` as one ``train`` (the fields not
    given keep their defaults) and the rest as they are.
    """
    signature = inspect.signature(command, eval_str=True)
    hints = get_type_hints(TrainOptions, include_extras=True)
    shared = [inspect.Parameter(f.name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=f.default,
                                annotation=hints[f.name]) for f in fields(TrainOptions)]
    params = [q for p in signature.parameters.values() for q in (shared if p.name == "train" else [p])]
    if len(params) != len(signature.parameters) + len(shared) - 1:
        raise TypeError(f"{command.__name__} needs a parameter train: TrainOptions")
    names = {f.name for f in fields(TrainOptions)}

    @functools.wraps(command)
    def with_train_options(**values: Any) -> None:
        train = TrainOptions(**{name: values.pop(name) for name in names & set(values)})
        return command(**values, train=train)

    with_train_options.__signature__ = signature.replace(parameters=params)  # what Typer reads
    with_train_options.__annotations__ = {p.name: p.annotation for p in params}
    with_train_options.__annotations__["return"] = signature.return_annotation
    return with_train_options
