"""How a ``detailclip`` process takes memory from the C library, set once before torch allocates.

A training step (and a batch of bulk inference) allocates and frees the same large tensors
again and again. glibc's ``malloc`` serves every block above its mmap threshold (128 KiB, rising
with use up to 32 MiB) with fresh pages from the kernel and gives them back when the block is
freed, so each step faults its working set in again (about 17,000 page faults in a step of the
tiny preset at batch 48, 200,000 in the small preset's at batch 16), and blocks above 32 MiB
always do. On Linux with glibc the command line therefore:

* serves every block from the heap (``M_MMAP_MAX`` 0) and gives its free top back to the
  kernel only past 2 GiB (``M_TRIM_THRESHOLD``): freed pages stay mapped for the next step;
* lets torch ask for 2 MiB pages for its tensors of 2 MiB and more (``THP_MEM_ALLOC_ENABLE``,
  read by torch at its first allocation), which the elementwise work, bound by memory
  bandwidth, gains from. Huge pages only pay on memory that stays mapped: with blocks still
  coming from ``mmap`` they make the small preset's step slower.

The cost is a resident size that stays at the process's peak (a few per cent above it, from
the heap's fragmentation). ``DETAILCLIP_ALLOCATOR=system`` keeps the C library's defaults, as
does a ``MALLOC_*`` or ``THP_MEM_ALLOC_ENABLE`` variable of the user's own. Measured in
docs/speed.md, "The training step". Only the command line's ``main``, which owns its process,
calls :func:`keep_memory_mapped`; importing the package changes nothing, except in a process a
``detailclip`` command started (:func:`follow_parent`). ``bench`` records :func:`describe`.
A torch program a command starts that never imports ``detailclip_cli`` inherits the 2 MiB-page
variable without the heap settings; the only one the commands start is ``bench``'s
``python -c "import torch"``, the start-up baseline, which allocates too little to notice.
"""

from __future__ import annotations

import ctypes
import os

ENV = "DETAILCLIP_ALLOCATOR"
HEAP = "heap"  # the value keep_memory_mapped leaves in ENV (children it starts inherit it)
# mallopt's parameter numbers (glibc's malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
# The largest trim threshold mallopt's int takes (2 GiB).
TRIM_AT = 2 ** 31 - 1


def _glibc():
    """The running C library when it is glibc (whose ``mallopt`` takes these numbers), else None."""
    try:
        name = os.confstr("CS_GNU_LIBC_VERSION") or ""
    except (AttributeError, ValueError, OSError):  # not a POSIX system, or not glibc
        return None
    return ctypes.CDLL(None) if name.startswith("glibc") else None


def keep_memory_mapped(environ: dict[str, str] | None = None) -> bool:
    """Set the process's allocator as the module says; returns whether it was changed.

    Call before torch is imported (torch reads ``THP_MEM_ALLOC_ENABLE`` once, at its first
    allocation; the heap settings hold from the call on). In a process a ``detailclip`` command
    started (``DETAILCLIP_ALLOCATOR=heap`` inherited), it sets the heap again: the environment
    passes to a child, the C library's settings do not, and 2 MiB pages without them are slow.

    Args:
        environ: the environment to read and set (``os.environ`` when None).
    """
    env = os.environ if environ is None else environ
    if env.get(ENV) != HEAP:
        if env.get(ENV, "").lower() == "system":
            return False
        if "THP_MEM_ALLOC_ENABLE" in env or any(name.startswith("MALLOC_") for name in env):
            return False  # the user tunes the allocator themselves
    libc = _glibc()
    if libc is None:
        return False
    kept = bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(libc.mallopt(M_TRIM_THRESHOLD, TRIM_AT))
    if kept:
        env["THP_MEM_ALLOC_ENABLE"] = "1"  # huge pages only on memory that stays mapped
        env[ENV] = HEAP
    return kept


def follow_parent() -> None:
    """In a process a ``detailclip`` command started, the settings it had (called on import)."""
    if os.environ.get(ENV) == HEAP:
        keep_memory_mapped()


def describe() -> str:
    """How this process allocates: ``"heap"`` when :func:`keep_memory_mapped` changed it, else ``"system"``."""
    return HEAP if os.environ.get(ENV) == HEAP else "system"
