"""An exclusive, OS-level lock on a file: one writer at a time in a run folder.

The lock is ``fcntl.flock`` on an open file. The kernel holds it for the open file and drops
it when the file is closed, which happens when the process exits in any way (a normal exit, an
exception, SIGKILL), so a lock left by a dead process never blocks anyone: there is nothing
stale to clean up. The holder writes its PID into the file once it has the lock, so the next
writer can say who holds it.

Readers never take it. On a platform without ``fcntl`` (Windows) locking is a no-op
(:data:`LOCKING_SUPPORTED` is False; ``docs/reliability.md`` says so).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from detailclip_cli.errors import WorkFailedError

try:
    import fcntl
except ImportError:  # Windows: no flock; see the module docstring
    fcntl = None

LOCKING_SUPPORTED = fcntl is not None


class LockedError(WorkFailedError):
    """Another process holds the lock (exit code 1: the work could not be done now)."""


class FileLock:
    """An exclusive lock held through ``path`` (created when missing, never deleted).

    Not re-entrant: a second :meth:`acquire` of the same file, even in this process, is refused
    (two writers in one process would mix a run folder just as two processes would).

    Args:
        path: the lock file.
        what: the thing the lock guards, for the message (e.g. ``run folder runs/demo``).
    """

    def __init__(self, path: str | Path, *, what: str):
        self.path, self.what = Path(path), what
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def holder(self) -> int | None:
        """The PID the file names (the holder's, while the lock is held); None when unknown."""
        try:
            text = self.path.read_text().strip()
        except (OSError, UnicodeDecodeError):
            return None
        return int(text) if text.isdigit() else None

    def acquire(self) -> FileLock:
        """Take the lock now or fail: never waits.

        Raises:
            LockedError: another holder has it; the message names its PID.
        """
        if self.held or fcntl is None:
            return self
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # EWOULDBLOCK: held by another open file (another process, or this one)
            os.close(fd)
            pid = self.holder()
            who = f"process {pid}" if pid is not None else "another process"
            raise LockedError(f"{self.what} is being written by {who} (its lock is {self.path}); wait for it "
                              "to finish, or stop it, then try again") from None
        # Ours now: name ourselves for the next writer (the old PID, of a dead holder, is replaced).
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return self

    def release(self) -> None:
        """Drop the lock (closing the file drops it; so does the process's death)."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            os.ftruncate(fd, 0)  # nobody holds it: no PID to name
        except OSError:
            pass
        os.close(fd)

    def __enter__(self) -> FileLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    def __del__(self) -> None:
        self.release()


@contextlib.contextmanager
def released_on_error(lock: FileLock) -> Iterator[FileLock]:
    """Release ``lock`` if the block raises; keep it held when the block succeeds (its result
    holds it on, e.g. a training run)."""
    try:
        yield lock
    except BaseException:
        lock.release()
        raise
