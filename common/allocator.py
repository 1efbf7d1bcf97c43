"""glibc malloc told to keep freed memory, for training processes.

By default glibc serves every block above its mmap threshold (128 KiB, rising to at most 32 MiB) with a fresh
mmap and unmaps it on free, and trims the heap top above 128 KiB; a training step frees and reallocates the same
large activations every step, so the kernel maps and zeroes them again each time (BENCHMARKS.md: ~86,000 minor
page faults per SSDLite CPU step, up to 2× the step time). The MALLOC_MMAP_MAX_=0 ... environment variables fix it
only when set before the process starts; `tune_allocator` applies the same settings from inside with mallopt(3).
The cost: a process keeps its peak heap until it exits, which a training process reaches every step anyway.
"""

from __future__ import annotations

import ctypes
import os
import platform

# mallopt(3) parameters (malloc.h) and the values: no mmap for large blocks, trim only above 2 GiB of free heap top
# (mallopt takes an int), grow the heap 1 GiB at a time (address space; pages are touched only when used).
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_MAX = -1, -2, -4
SETTINGS = ((M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, (1 << 31) - 1), (M_TOP_PAD, 1 << 30))
DESCRIPTION = "glibc malloc keeps freed memory (mallopt M_MMAP_MAX=0, M_TRIM_THRESHOLD=2 GiB, M_TOP_PAD=1 GiB)"
# A user's own malloc settings win: environment variables glibc reads at start-up, or another allocator preloaded.
USER_SETTINGS = ("MALLOC_MMAP_MAX_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_")


def tune_allocator() -> str | None:
    """Apply SETTINGS to this process (and the DataLoader workers it forks later) where glibc's malloc serves it;
    return what was done, for the log, or None where nothing was (another C library, another allocator preloaded,
    the user's own MALLOC_* or glibc.malloc tunables in the environment, or mallopt refusing)."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    if any(name in os.environ for name in USER_SETTINGS) or "glibc.malloc" in os.environ.get("GLIBC_TUNABLES", ""):
        return None
    if "malloc" in os.environ.get("LD_PRELOAD", ""):  # jemalloc, tcmalloc, mimalloc: glibc's mallopt is moot
        return None
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)
    if mallopt is None:
        return None
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    if not all(mallopt(param, value) == 1 for param, value in SETTINGS):
        return None
    return DESCRIPTION
