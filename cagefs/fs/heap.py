"""The daemon's dealings with glibc's allocator.

Two needs pull apart. pyfuse3 allocates a fresh 1 MiB buffer per FUSE write: glibc would mmap
and unmap each one (throughput went bimodal), so `tune` raises the mmap and trim thresholds.
But a file staged in RAM (the memory strategy) is freed in 64 KiB blocks scattered through the
heap, and glibc keeps such memory: after a 1 GiB staged file was published the daemon stayed at
1.1 GB of RSS, and large reads in that daemon ran 25-40 % slower. `give_back` returns it.
Smaller bursts did not reach `give_back` and stayed too: under SQLite the main heap held 54-58
MiB resident with 20 MiB in use, and the daemon peaked at 150-160 MiB (PSS, its sealer
included); so the publisher's round also calls `give_back_when_kept`, which returns what glibc
keeps once that passes `KEEP_LIMIT`: the heap held 22-27 MiB, the peak 133-140 MiB.
"""

import ctypes
import threading

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3

KEEP_LIMIT = 8 * 1024 * 1024  # freed memory glibc may keep before the next round returns it

try:
    _libc: ctypes.CDLL | None = ctypes.CDLL("libc.so.6")
except OSError:  # not glibc: nothing to tune
    _libc = None


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena", "ordblks", "smblks", "hblks", "hblkhd",
            "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost",
        )
    ]  # fmt: skip


_mallinfo2 = getattr(_libc, "mallinfo2", None)  # glibc 2.33 and later
if _mallinfo2 is not None:
    _mallinfo2.restype = _MallInfo2


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


def kept() -> int:
    """Bytes freed but kept by glibc in its heaps (0 where that cannot be asked)."""
    return _mallinfo2().fordblks if _mallinfo2 is not None else 0


def give_back_when_kept(limit: int = KEEP_LIMIT) -> None:
    """`give_back` if glibc keeps at least `limit` freed bytes."""
    if kept() >= limit:
        give_back()
