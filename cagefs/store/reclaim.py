"""Letting go of the versions a publish replaces, away from the event loop and the fsync.

The call that drops the last reference to a file frees its blocks there and then. On this
machine's ext4, mounted with `discard`, `rename(2)` over a 1 GiB file took 1.1-1.4 s. The
publisher renamed on the event loop, so every request of the mount waited, and an application's
fsync of a rewritten file took twice as long as writing it.

So the publisher first takes a reference of its own to the file it is about to replace (`hold`:
an O_PATH descriptor, opened in microseconds), renames as before, and once the new version's
directory is durable hands the reference to one background thread (`close_later`), where the
freeing happens. Only replaced versions go this way: an old version's space was never going
to be free before its replacement is published.

Space a caller expects back when its call returns (unlink, a rename over a file) is freed in
that call, but not on the event loop either: the request takes a `Held` reference to a large
file before removing its name, then waits on a worker thread for `Held.free`, while the loop
serves other requests. (A failed version is small, or already on a worker thread.)
"""

import os
from concurrent.futures import Future

from cagefs.pools import LazyPool

LARGE = 16 * 1024 * 1024  # freeing a smaller file takes a few milliseconds at most
_closer = LazyPool("cagefs-reclaim", lambda: 1)  # one thread: closes happen in order
_last: Future[None] | None = None


def hold(path: str, dir_fd: int | None = None) -> int | None:
    """A reference that keeps the file at `path` (in `dir_fd`) alive after its name goes;
    None if there is none."""
    try:
        return os.open(path, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    except FileNotFoundError:
        return None


def close_later(*fds: int | None) -> None:
    """Close these descriptors on the background thread, in order (None is skipped)."""
    global _last
    for fd in fds:
        if fd is not None:
            _last = _closer().submit(os.close, fd)


def wait() -> None:
    """Return once every descriptor handed to `close_later` so far is closed."""
    if _last is not None:
        _last.exception()


class Held:
    """References to large files about to lose their last name, so that they are freed at
    `free`, on a thread of the caller's choosing, and not by the unlink or rename."""

    def __init__(self) -> None:
        self._fds: list[int] = []

    def __bool__(self) -> bool:
        return bool(self._fds)

    def take(self, path: str, dir_fd: int | None = None) -> None:
        """Hold the file at `path` (in `dir_fd`) if it is large (nothing happens if there is
        none)."""
        fd = hold(path, dir_fd)
        if fd is None:
            return
        if os.fstat(fd).st_blocks * 512 < LARGE:
            os.close(fd)
        else:
            self._fds.append(fd)

    def free(self) -> None:
        """Let go of every reference: a file whose name is gone is freed, maybe for seconds."""
        fds, self._fds = self._fds, []
        if fds:  # a version of the file closed just before (`close_later`) is let go first,
            wait()  # so that these are the last references and the file is freed here
        for fd in fds:
            os.close(fd)
