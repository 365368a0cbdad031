"""The run folder's writer lock: exclusive, released by the holder's death, never blocking readers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from detailclip_cli.core.store.lock import LOCKING_SUPPORTED, FileLock, LockedError
from detailclip_cli.core.store.run import RunFolder
from detailclip_cli.errors import UsageError

pytestmark = pytest.mark.skipif(not LOCKING_SUPPORTED, reason="no fcntl: locking is a no-op here")

# A helper process that holds a folder's lock until it is killed (the writer it stands for).
HOLDER = """
import sys, time
from detailclip_cli.core.store.run import RunFolder
lock = RunFolder(sys.argv[1]).claim(resume=True)
print("held", flush=True)
time.sleep(120)
"""


def _hold(folder) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


@pytest.mark.slow
def test_a_second_claim_is_refused_naming_the_holder_then_free_after_its_death(tmp_path):
    run = RunFolder(tmp_path / "run")
    run.path.mkdir()  # a resumed run's folder exists (claiming a missing one to resume is refused)
    holder = _hold(run.path)
    try:
        with pytest.raises(LockedError, match=f"being written by process {holder.pid}") as info:
            run.claim(resume=True)
        assert info.value.exit_code == 1 and "\n" not in str(info.value)
        assert run.contents() == []  # the refused writer wrote nothing
    finally:
        holder.send_signal(signal.SIGKILL)  # no cleanup runs: the kernel drops the lock
        holder.wait(timeout=30)
    assert FileLock(run.lock_file, what="x").holder() == holder.pid  # the dead holder's PID is still there ...
    lock = run.claim(resume=True)  # ... and blocks nothing
    assert lock.holder() == os.getpid()
    lock.release()


def test_one_process_cannot_hold_a_folder_twice(tmp_path):
    run = RunFolder(tmp_path)
    lock = run.claim(resume=True)
    with pytest.raises(LockedError, match=f"process {os.getpid()}"):
        run.claim(resume=True)
    lock.release()
    run.claim(resume=True).release()


def test_a_new_run_refuses_a_folder_with_files_unless_forced(tmp_path):
    run = RunFolder(tmp_path / "run")
    run.path.mkdir()
    (run.path / "notes.txt").write_text("mine")
    with pytest.raises(UsageError, match="already holds files.*--force"):
        run.claim(resume=False)
    lock = run.claim(resume=False, force=True)  # refused above, so the lock was released
    aside = run.create({"data": "demo"})
    lock.release()
    assert aside.name.startswith("run.old-") and aside.parent == tmp_path
    assert (aside / "notes.txt").read_text() == "mine"  # moved whole, not mixed
    assert [p.name for p in run.contents()] == [RunFolder.RUN_FILE]


def test_an_out_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "f").write_text("")
    with pytest.raises(UsageError, match="is a file"):
        RunFolder(tmp_path / "f").claim(resume=False)


@pytest.mark.slow
def test_readers_never_take_the_lock_or_write(tmp_path):
    run = RunFolder(tmp_path)
    (tmp_path / RunFolder.RUN_FILE).write_text('{"train": {}}')
    run.stage_dir.mkdir()  # a checkpoint a writer is writing right now
    holder = _hold(tmp_path)
    try:
        assert run.recorded() == {"train": {}}
        assert run.metrics() == []
        assert run.stage_dir.exists()  # a reader left the writer's staging folder alone
    finally:
        holder.kill()
        holder.wait(timeout=30)


@pytest.mark.slow
def test_the_lock_is_released_when_the_process_exits_normally(tmp_path):
    code = "import sys; from detailclip_cli.core.store.run import RunFolder; RunFolder(sys.argv[1]).claim(resume=True)"
    subprocess.run([sys.executable, "-c", code, str(tmp_path)], check=True, timeout=60)
    RunFolder(tmp_path).claim(resume=True).release()  # never waits: taken at once, or refused
