"""Process-level settings that make XLA on CPU fast.

XLA:CPU allocates its scratch buffers (tens of MB for a batch of images) with ``malloc``
on every call. glibc serves allocations above its mmap threshold with fresh ``mmap``
pages and returns them to the OS on ``free``, so every call pays ~10^4 page faults
(measured here: ~60 ms of kernel time per value-and-gradient call of a 64-image batch,
more than the arithmetic). :func:`tune_cpu_allocator` keeps freed memory in the heap
instead. It changes allocator behaviour for the whole process, so the library never calls
it on import: the command line and the benchmarks call it, and users may.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

__all__ = ["tune_cpu_allocator"]

_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_TUNED = False


def tune_cpu_allocator() -> bool:
    """Stop glibc from returning large freed blocks to the OS (Linux/glibc only).

    Equivalent to ``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=2147483647``. The process
    keeps its peak heap size instead of unmapping it after each XLA call. Returns True if
    the settings were applied, False where there is no glibc ``mallopt`` (a no-op).
    """
    global _TUNED
    if _TUNED:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    ok = mallopt(_M_MMAP_MAX, 0) == 1 and mallopt(_M_TRIM_THRESHOLD, 2**31 - 1) == 1
    _TUNED = bool(ok)
    return _TUNED
