"""The daemon's dealings with glibc's allocator.

Two needs pull apart. pyfuse3 allocates a fresh 1 MiB buffer per FUSE write: glibc would mmap
and unmap each one (throughput went bimodal), so `tune` raises the mmap and trim thresholds.
But a file staged in RAM (the memory strategy) is freed in 64 KiB blocks scattered through the
heap, and glibc keeps such memory: after a 1 GiB staged file was published the daemon stayed at
1.1 GB of RSS, and large reads in that daemon ran 25-40 % slower. `give_back` returns it.
"""

import ctypes
import threading

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3

try:
    _libc: ctypes.CDLL | None = ctypes.CDLL("libc.so.6")
except OSError:  # not glibc: nothing to tune
    _libc = None


def tune() -> None:
    """Keep glibc from mmap'ing and unmapping a fresh buffer for every 1 MiB FUSE write."""
    if _libc is not None:
        _libc.mallopt(_M_MMAP_THRESHOLD, 16 * 1024 * 1024)
        _libc.mallopt(_M_TRIM_THRESHOLD, 64 * 1024 * 1024)


def give_back() -> None:
    """Return freed memory to the system, on a thread of its own: trimming a heap that held a
    gigabyte takes a while, and ctypes lets go of the GIL meanwhile."""
    if _libc is not None:
        threading.Thread(target=_libc.malloc_trim, args=(0,), name="cagefs-trim").start()
