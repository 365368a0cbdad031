"""The command line's allocator settings (detailclip_cli/allocator.py): when they apply, and what
they do to a process's page faults, measured in fresh processes."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from detailclip_cli import allocator

glibc = pytest.mark.skipif(allocator._glibc() is None, reason="the settings are glibc's")

# Allocates, fills and frees a 64 MiB block twice; prints the page faults of the second time.
FAULTS = r"""
import ctypes, resource, sys
from detailclip_cli import allocator
if sys.argv[1] == "keep":
    assert allocator.keep_memory_mapped()
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
libc.memset.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]
size = 64 << 20
def fill_and_free():
    block = libc.malloc(size)
    libc.memset(block, 1, size)
    libc.free(block)
fill_and_free()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
fill_and_free()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without any allocator setting, plus ``extra``."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("MALLOC_") and k not in ("THP_MEM_ALLOC_ENABLE", allocator.ENV)}
    return {**env, **extra}


def run(code: str, *args: str, env: dict[str, str]) -> str:
    result = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


class FakeLibc:
    """Records mallopt's calls (this test process's own allocator stays as it is)."""

    def __init__(self, answer: int = 1):
        self.answer, self.calls = answer, []

    def mallopt(self, param: int, value: int) -> int:
        self.calls.append((param, value))
        return self.answer


def test_settings_apply_unless_the_user_chose_otherwise(monkeypatch):
    libc = FakeLibc()
    monkeypatch.setattr(allocator, "_glibc", lambda: libc)
    env: dict[str, str] = {}
    assert allocator.keep_memory_mapped(env)
    assert env == {"THP_MEM_ALLOC_ENABLE": "1", allocator.ENV: allocator.HEAP}
    assert libc.calls == [(-4, 0), (-1, 2 ** 31 - 1)]  # M_MMAP_MAX 0, M_TRIM_THRESHOLD 2 GiB
    for own in ({allocator.ENV: "system"}, {allocator.ENV: "SYSTEM"}, {"MALLOC_ARENA_MAX": "2"},
                {"THP_MEM_ALLOC_ENABLE": "0"}):
        env = dict(own)
        assert not allocator.keep_memory_mapped(env)
        assert env == own  # nothing added
    assert len(libc.calls) == 2  # nor asked of the C library
    # A process a detailclip command started inherits both variables and sets its own heap again.
    assert allocator.keep_memory_mapped({"THP_MEM_ALLOC_ENABLE": "1", allocator.ENV: allocator.HEAP})
    assert len(libc.calls) == 4


def test_no_huge_pages_when_the_heap_cannot_be_kept(monkeypatch):
    monkeypatch.setattr(allocator, "_glibc", lambda: FakeLibc(answer=0))
    env: dict[str, str] = {}
    assert not allocator.keep_memory_mapped(env)
    assert env == {}  # 2 MiB pages on memory given back each step are slower than none
    monkeypatch.setattr(allocator, "_glibc", lambda: None)  # not glibc: nothing to set
    assert not allocator.keep_memory_mapped(env) and env == {}


@glibc
def test_a_freed_block_stays_mapped_and_refills_without_page_faults():
    kept = int(run(FAULTS, "keep", env=clean_env()))
    system = int(run(FAULTS, "system", env=clean_env()))
    assert kept < 64
    # glibc's default gives the 64 MiB block back to the kernel, so the second fill faults again
    # (16,384 faults with 4 KiB pages, 32 where the system always uses 2 MiB pages).
    assert system >= 10 * max(kept, 1)


@glibc
def test_a_child_of_a_detailclip_process_sets_the_heap_again_on_import():
    env = clean_env(THP_MEM_ALLOC_ENABLE="1", **{allocator.ENV: allocator.HEAP})
    assert int(run(FAULTS, "inherit", env=env)) < 64  # importing detailclip_cli was enough


@glibc
def test_main_sets_the_allocator_before_any_command():
    code = ("import atexit, os, sys\n"
            "atexit.register(lambda: print(os.environ.get('DETAILCLIP_ALLOCATOR')))\n"
            "from detailclip_cli.cli import main\n"
            "sys.argv = ['detailclip', '--version']\n"
            "main()\n")
    lines = run(code, env=clean_env()).splitlines()
    assert lines[-1] == allocator.HEAP
    assert run(code, env=clean_env(**{allocator.ENV: "system"})).splitlines()[-1] == "system"


def test_describe_reads_the_marker(monkeypatch):
    monkeypatch.setenv(allocator.ENV, allocator.HEAP)
    assert allocator.describe() == "heap"
    monkeypatch.setenv(allocator.ENV, "system")
    assert allocator.describe() == "system"
    monkeypatch.delenv(allocator.ENV)
    assert allocator.describe() == "system"
