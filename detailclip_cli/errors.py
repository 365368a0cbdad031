"""Errors meant for people: one line each, mapped to the CLI's exit codes (torch-free module)."""


class DetailclipError(Exception):
    """Base of the errors the CLI prints as one line; ``exit_code`` is the process's exit status
    (1 the work failed, 2 a usage error; the README lists them)."""

    exit_code = 1


class UsageError(DetailclipError):
    """A bad value, option, file or folder given by the user (exit code 2)."""

    exit_code = 2


class WorkFailedError(DetailclipError):
    """The work itself failed (exit code 1)."""

    exit_code = 1


class TrainingError(WorkFailedError):
    """The run cannot go on (e.g. a non-finite loss); the message is one line for people."""


class Interrupted(WorkFailedError):
    """The run was asked to stop (Ctrl-C, SIGTERM); a checkpoint of the last whole step was saved."""
