"""glibc's malloc told to keep the memory torch frees, for long loops on the CPU.

Torch's CPU tensors come from ``malloc``. glibc serves large requests with fresh ``mmap`` pages and
hands freed memory back to the system (``munmap``, trimming the heap, unmapping a thread's arena),
so each step of a CPU loop that makes large temporaries faults their pages in again and the kernel
zeroes every one: an 8 x 8 grid at 72 x 128 (the default model, bf16) took about 214,000 page
faults a denoising step, some 0.9 GB of zeroed pages. ``keep_freed_memory()`` raises glibc's mmap
threshold to its ceiling (32 MB on 64-bit systems), the trim threshold to 1 GB, and keeps every
thread on the main heap (one arena: a worker thread's own arena is unmapped whenever it empties,
and the studio samples in worker threads), so freed blocks stay and the next step reuses them: no
page faults a step after the first; the README's ``generate`` command took 57.2 s against 59.3 s
(medians of three whole processes in turns, 2-core CPU). The 3D fit, whose tensors are small, made
half the page faults and ran no faster. ``MALLOC_MMAP_THRESHOLD_`` and ``MALLOC_TRIM_THRESHOLD_`` set
before a process starts do the same for the main heap; where either is set, or the C library is
not glibc, nothing changes. Threads that already have an arena keep it, so ``launch.py`` calls it
first for commands that run on the CPU. The cost: up to 1 GB of freed memory stays with the process.
"""

from __future__ import annotations

import ctypes
import os
import sys

M_TRIM_THRESHOLD = -1  # glibc's mallopt parameters (malloc.h)
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8
MMAP_THRESHOLD = 32 * 1024 * 1024  # glibc's ceiling for it on 64-bit systems
TRIM_THRESHOLD = 1024 * 1024 * 1024

_state: bool | None = None


def _mallopt():
    """glibc's ``mallopt``, or None elsewhere."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)
        if not hasattr(libc, "gnu_get_libc_version"):  # musl and others: not glibc's thresholds
            return None
        fn = libc.mallopt
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int]
    fn.restype = ctypes.c_int
    return fn


def keep_freed_memory() -> bool:
    """Set the thresholds once per process; True when they are in force (set here or by the
    environment), False where they could not be set."""
    global _state
    if _state is None:
        if os.environ.get("MALLOC_MMAP_THRESHOLD_") or os.environ.get("MALLOC_TRIM_THRESHOLD_"):
            _state = True  # the user's own settings stand
        else:
            fn = _mallopt()
            _state = bool(fn is not None and fn(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
                          and fn(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1 and fn(M_ARENA_MAX, 1) == 1)
    return _state
