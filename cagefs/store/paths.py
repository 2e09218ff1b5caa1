"""Backing entries reached through directory descriptors, never through whole path strings.

A plaintext directory `a/b` is found by opening `a` in the store root, then `b` in `a`, each
with `O_NOFOLLOW | O_DIRECTORY`; the entry itself is then named to an `*at()` call on that
directory. So only each component's length limits a path (STORE + path + ".age" may be longer
than PATH_MAX), and a symlink swapped into the store in place of a directory or an entry is
never followed. Nothing is cached: a request opens the few descriptors it needs.
"""

import contextlib
import os
import stat
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

# O_PATH: walking needs search permission only, as a path lookup does, not read permission.
_WALK = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class StoreDirs:
    """The store root, held open for the mount's life, and directories under it by path."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.fd = os.open(root, _WALK)

    def close(self) -> None:
        os.close(self.fd)

    def open(self, path: str) -> int:
        """A new descriptor (O_PATH) of the store directory at plaintext path `path`."""
        if not path:
            return os.open(".", _WALK, dir_fd=self.fd)
        fd = self.fd
        try:
            for name in path.split("/"):
                fd_below = os.open(name, _WALK, dir_fd=fd)
                if fd != self.fd:
                    os.close(fd)
                fd = fd_below
        except BaseException:
            if fd != self.fd:
                os.close(fd)
            raise
        return fd

    @contextlib.contextmanager
    def at(self, path: str) -> Iterator[int]:
        """The store directory at plaintext path `path`, for the block's `*at()` calls. The
        root's is the descriptor held open (most requests of a flat tree: nothing opened)."""
        if not path:
            yield self.fd
            return
        fd = self.open(path)
        try:
            yield fd
        finally:
            os.close(fd)


def open_listing(dir_fd: int) -> int:
    """A descriptor of the directory `dir_fd` that can be read (os.scandir) or fsync'ed."""
    return os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=dir_fd)


def open_file(dir_fd: int, name: str, noatime: bool = False) -> int:
    """Open a backing file for reading; a symlink or FIFO put in its place is not followed
    or waited on (ELOOP, or a read of nothing). `noatime`: reading it is not an access that
    shows (where the daemon may ask for that: it owns the file, or is root)."""
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    if noatime:
        with contextlib.suppress(PermissionError):
            return os.open(name, flags | os.O_NOATIME, dir_fd=dir_fd)
    return os.open(name, flags, dir_fd=dir_fd)


def chmod_at(dir_fd: int, name: str, mode: int) -> None:
    """chmod of the entry itself, never of what a symlink there points to (Linux has no
    working fchmodat(AT_SYMLINK_NOFOLLOW): go through an O_PATH descriptor of the entry)."""
    fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    try:
        if stat.S_ISLNK(os.fstat(fd).st_mode):
            return  # a symlink's mode means nothing on Linux
        os.chmod(f"/proc/self/fd/{fd}", mode)
    finally:
        os.close(fd)


def touch_dir(dir_fd: int) -> None:
    """The directory's mtime and ctime become now, as when a name in it comes or goes: for
    names that reach the store only later (a new file is written there at its publish)."""
    st = os.lstat(".", dir_fd=dir_fd)
    with contextlib.suppress(PermissionError):  # a directory the daemon does not own
        os.utime(".", ns=(st.st_atime_ns, time.time_ns()), dir_fd=dir_fd)


def rename_into(source: str, dir_fd: int, name: str) -> tuple[os.stat_result, os.stat_result]:
    """Rename `source` (an absolute path) to `name` in `dir_fd`, leaving the directory's times
    as they were (the name was already there for whoever looked: a publish, not a change),
    but its ctime, which cannot be set. Returns the directory's stat before and after."""
    return _keeping_times(dir_fd, lambda: os.rename(source, name, dst_dir_fd=dir_fd))


def link_over(
    source: str, dir_fd: int, name: str, temp: str
) -> tuple[os.stat_result, os.stat_result]:
    """Make `name` in `dir_fd` one more name of the file at `source` (an absolute path),
    atomically replacing what was there: a hard link `temp` beside it (one a crash left is
    replaced), renamed over it. The directory's times as with `rename_into`."""

    def link_and_rename() -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp, dir_fd=dir_fd)
        os.link(source, temp, dst_dir_fd=dir_fd, follow_symlinks=False)
        try:
            os.rename(temp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        finally:  # renaming a link over another link of the same file leaves both
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp, dir_fd=dir_fd)

    return _keeping_times(dir_fd, link_and_rename)


def _keeping_times(
    dir_fd: int, change: Callable[[], None]
) -> tuple[os.stat_result, os.stat_result]:
    before = os.lstat(".", dir_fd=dir_fd)
    change()
    with contextlib.suppress(PermissionError):  # a directory the daemon does not own
        os.utime(".", ns=(before.st_atime_ns, before.st_mtime_ns), dir_fd=dir_fd)
    return before, os.lstat(".", dir_fd=dir_fd)


def free_bytes(where: Path | int) -> int:
    """Bytes an unprivileged writer may still use on the filesystem holding `where`."""
    st = os.statvfs(where)
    return st.f_bavail * st.f_frsize


def fsync_dir(path: Path) -> None:
    """Make a rename into the directory at `path` durable."""
    fsync_dirs([os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)])


def fsync_dirs(dir_fds: Sequence[int]) -> set[tuple[int, int]]:
    """Make renames into these directories durable: fsync each directory once, close all.
    Returns the directories' (st_dev, st_ino)."""
    seen: set[tuple[int, int]] = set()
    try:
        for fd in dir_fds:
            st = os.fstat(fd)
            if (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                os.fsync(fd)
    finally:
        for fd in dir_fds:
            os.close(fd)
    return seen
