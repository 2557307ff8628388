"""Keep freed CPU memory in the process, so that a mask step's K-stacks reuse it.

A fused mask step allocates several K-stacks per masked matrix (the masked weights, their
per-sample gradients), each K times the weight: 10 MB per 800x800 layer at K = 4, 64 MB at
2000x2000. glibc serves allocations above its mmap threshold (at most 32 MB, and lower until one is
freed) with fresh mmap'ed pages and returns them to the OS on free, and trims the heap top; the next
step then pays a page fault and a zeroed page for every 4 kB it writes. Measured on the 2-core
development VM, one thread: the forward kernel of a [4, 2000, 2000] stack took 44 ms with
fresh pages and 14 ms with reused memory (benchmarks/README.md). A plain training step's tensors
are too small to meet this.

keep_freed_cpu_memory() turns mmap off for malloc and raises the trim threshold to 1 GiB: freed
blocks stay in the heap for the next step, the process keeps its peak memory (what a caching
allocator does anyway). It changes the whole process's allocator, so it runs once, from the first
fused mask step on a CPU, and not where the MALLOC_* environment variables already say what to do
or where the C library is not glibc.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os

log = logging.getLogger(__name__)

_M_TRIM_THRESHOLD = -1  # mallopt parameter numbers, from glibc's malloc.h
_M_MMAP_MAX = -4
_TRIM_THRESHOLD_BYTES = 1 << 30
_USER_SETTINGS = ("MALLOC_MMAP_MAX_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_")


@functools.cache
def keep_freed_cpu_memory() -> bool:
    """Make glibc keep freed memory for reuse (see the module docstring); True if it was changed."""
    if any(name in os.environ for name in _USER_SETTINGS):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # not glibc (macOS, Windows, musl)
        return False
    changed = bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD_BYTES))
    log.info("glibc malloc keeps freed memory for reuse (mmap off, trim threshold 1 GiB): %s", changed)
    return changed
