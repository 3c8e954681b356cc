"""glibc malloc thresholds for a proxy that cycles large buffers.

glibc serves allocations of 128 KiB and more with mmap and gives them back with munmap,
and returns free memory at the top of the heap once it exceeds the trim threshold. A
relay allocates and frees buffers of 16-256 KiB for every read, so with the defaults a
bulk transfer keeps mapping, unmapping and page-faulting the same memory: 4.5% of the
receiving ztunnel's CPU was page faults. Fixed thresholds keep those buffers on the heap
and let the heap keep a few MiB free for the next read.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger("meshcore.malloc")
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD = 1024 * 1024       # above every buffer the data path allocates
TRIM_THRESHOLD = 8 * 1024 * 1024   # free heap kept for reuse before returning it


def tune(mmap_threshold: int = MMAP_THRESHOLD, trim_threshold: int = TRIM_THRESHOLD) -> bool:
    """Set glibc's thresholds; False (and nothing changed) on a libc without mallopt."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        log.info("malloc: no glibc mallopt here; allocator thresholds left at their defaults")
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, mmap_threshold)) and bool(mallopt(M_TRIM_THRESHOLD, trim_threshold))
