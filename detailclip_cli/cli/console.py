"""Everything a command says on stderr: the console, one-line messages, progress bars, and the
drawing of a training run (its progress, its warnings, a graceful stop on Ctrl-C / SIGTERM).

Messages and progress go to stderr so that results on stdout stay clean for pipelines. Under
torchrun only rank 0 speaks. Nothing here imports torch at module level.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

from detailclip_cli.core.choices import Removal

# Progress bars of the commands that read images appear from this many images on (and only
# when stderr is a terminal).
PROGRESS_MIN_IMAGES = 16


def is_main_rank() -> bool:
    """False in the processes torchrun starts besides rank 0, which stay quiet (read without torch)."""
    return os.environ.get("RANK", "0") == "0"


def err_console():
    """A Rich console on stderr: messages and progress never mix with results on stdout.

    Under torchrun only rank 0's console prints; the other processes' is silent.
    """
    from rich.console import Console

    return Console(stderr=True, quiet=not is_main_rank())


def say(console, text: str, **style) -> None:
    """One plain line on stderr: no markup or highlighting, never wrapped (paths stay whole)."""
    console.print(text, markup=False, highlight=False, soft_wrap=True, **style)


def unsafe_char(c: str) -> bool:
    """A control character or a lone surrogate: it would break a line or the terminal."""
    o = ord(c)
    return o < 0x20 or 0x7F <= o <= 0x9F or 0xD800 <= o <= 0xDFFF


def one_line(text: object) -> str:
    """``text`` safe to print as one line: control characters (a newline in a file name) and
    lone surrogates (a file name that is not UTF-8) escaped, as Python writes them."""
    text = str(text)
    return "".join(_escape(c) for c in text) if any(unsafe_char(c) for c in text) else text


def _escape(c: str) -> str:
    return c.encode("unicode_escape", "backslashreplace").decode("ascii") if unsafe_char(c) else c


@contextlib.contextmanager
def progress_bar(console, total: int, description: str) -> Iterator:
    """A Rich progress bar on stderr; ``advance(n)`` is a no-op when there are few images."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    enabled = total >= PROGRESS_MIN_IMAGES and console.is_terminal
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=console, disable=not enabled, transient=True) as progress:
        task = progress.add_task(description, total=total)
        yield lambda n: progress.advance(task, n)


# -- training runs ----------------------------------------------------------------------------------------


@contextlib.contextmanager
def stage_progress(console) -> Iterator:
    """``(description, total) -> advance``: one Rich bar per stage on stderr, with images/s and ETA."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    speed = TextColumn("{task.fields[rate]}")
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), speed,
                  TimeRemainingColumn(), console=console, disable=not console.is_terminal) as progress:
        def start(description: str, total: int):
            if total < PROGRESS_MIN_IMAGES:
                return None
            task = progress.add_task(description, total=total, rate="")
            t0 = time.perf_counter()

            def advance(n: int) -> None:
                progress.advance(task, n)
                done = progress.tasks[task].completed
                progress.update(task, rate=f"{done / max(time.perf_counter() - t0, 1e-9):.0f} img/s")

            return advance

        yield start


def removal_summary(train_cfg) -> str:
    """``removal=attention keep=0.5 block=2`` (or ``removal=none``) for a run's header line."""
    c = train_cfg
    return f"removal={c.removal}" + (f" keep={c.keep_ratio} block={c.block_size}" if c.removal != Removal.none else "")


def format_stats(info, show: tuple[str, ...] = ()) -> str:
    """One line of a training step's figures: each named loss, the ``show`` extras, lr, throughput."""
    losses = "  ".join(f"{k} {v:.3f}" for k, v in info.losses.items())
    extras = "".join(f"  {k} {info.extra[k]:.4g}" for k in show if k in info.extra)
    return f"{losses}{extras}  lr {info.lr:.2e}  {info.images_per_sec:.0f} img/s"


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

    # imported on use, not at the top: --help must not load torch (start-up time)
    from detailclip_cli.core.method.collapse import (
        CollapseWarning,  # torch: only once a run is driven
    )

    moved = getattr(steps, "moved_aside", None)
    if moved is not None:
        say(console, f"--force: the files that were in {out_dir} are now in {moved}")
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
    start = getattr(steps, "start_step", 0)
    if last is None and start >= total:
        say(console, f"nothing to train: the run in {out_dir} is already at step {start} of {total}; "
                     f"give --steps N (more than {start}) with --resume to train it further")
    if last is not None:
        # imported on use, not at the top: --help must not load torch (start-up time)
        from detailclip_cli.core.store.run import RunFolder

        run = RunFolder(out_dir)
        skipped = int(last.extra.get("bad_samples", 0))
        console.print(
            f"done: {last.step} steps in {last.elapsed_s:.0f}s, loss {last.losses['loss']:.3f}; "
            f"model in {run.model_file}, metrics in {run.metrics_file}"
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
            # A KeyboardInterrupt, which no handler in the loop swallows; the entry point ends with
            # exit code 130 and its error line.
            say(self.console, f"{signal.Signals(signum).name} again: stopping at once, without this step's "
                              "checkpoint; the last complete checkpoint is kept (continue with --resume)")
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


class StepProgress:
    """A Rich progress bar over training steps with the latest figures on a line below it.

    When stderr is not a terminal (logs, CI) it prints one plain line per logged step instead.
    """

    def __init__(self, console, total: int, show: tuple[str, ...] = ()):
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )
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
