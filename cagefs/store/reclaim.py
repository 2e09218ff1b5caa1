"""Letting go of replaced and deleted files away from the event loop.

The call that drops the last reference to a file (rename(2) over it, unlink(2), or the last
close(2)) frees its blocks there and then. On this machine's ext4, mounted with `discard`,
that took 1.1-1.4 s for a 1 GiB file. Done on the event loop, every request of the mount
waited for it; done inside a publish, an application's fsync of a rewritten file took twice
as long as writing it.

So code that is about to drop a file's last name first takes a reference of its own (`hold`:
an O_PATH descriptor, opened in microseconds), and such references, like the descriptors of
files that may already be gone, are closed by one background thread (`close_later`). The
namespace changes themselves stay where they were, on the loop, atomic as before.

The freeing still costs the disk what it costs, now while other work goes on: a 1 GiB
scratch file freed in the background slowed the cold read that followed it by a quarter. A
request whose own work that freeing is can `wait` for it on a worker thread (the sealing of a
file staged in a scratch file does).
"""

import os
from concurrent.futures import Future

from cagefs.pools import LazyPool

_closer = LazyPool("cagefs-reclaim", lambda: 1)  # one thread: closes happen in order
_last: Future[None] | None = None


def hold(path: str) -> int | None:
    """A reference that keeps the file at `path` alive after its name goes; None if none."""
    try:
        return os.open(path, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return None


def close_later(*fds: int | None) -> None:
    """Close these descriptors on the background thread, in order (None is skipped)."""
    global _last
    for fd in fds:
        if fd is not None:
            _last = _closer().submit(os.close, fd)


def unlink(path: str) -> None:
    """unlink(2), leaving the freeing of the file's blocks to the background thread."""
    held = hold(path)
    try:
        os.unlink(path)
    finally:
        close_later(held)


def rename(source: str, target: str) -> None:
    """rename(2), leaving the freeing of a file it replaces to the background thread."""
    held = hold(target)
    try:
        os.rename(source, target)
    finally:
        close_later(held)


def wait() -> None:
    """Return once every descriptor handed to `close_later` so far is closed."""
    if _last is not None:
        _last.exception()
