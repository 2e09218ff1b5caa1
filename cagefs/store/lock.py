"""One writer per store (DESIGN I10): an exclusive `flock` on `STORE/.cagefs/lock`.

A mount holds it for the daemon's whole life, and every offline verb that writes the store
holds it while it works. flock belongs to the open file description: a forked daemon shares the
lock its parent took (so the refusal can happen in front, before forking), and the lock goes
away with the last process holding that description, so a `kill -9`ed daemon never leaves a
stale lock behind. The descriptor is O_CLOEXEC, so no exec'd child (a sealer, fusermount3)
keeps the store locked after the daemon is gone.

The file also records who holds the lock (pid and mount point or verb), only so that a refusal
can say so; the flock alone decides.
"""

import contextlib
import errno
import fcntl
import os
from pathlib import Path
from types import TracebackType

from cagefs.errors import CageError, ExitCode
from cagefs.store.layout import META_DIR

LOCK_FILE = f"{META_DIR}/lock"


class StoreBusy(CageError):
    """Another process holds the store's lock."""

    exit_code = ExitCode.STORE_BUSY

    def __init__(
        self, store: Path, holder: str | None, pid: int | None, saving: bool = False
    ) -> None:
        self.store = store
        self.holder = holder
        self.pid = pid
        if saving:  # its mount is gone, but the daemon is still publishing what it was given
            what = f"pid {pid} is still saving what was written on {holder} (unmounted)"
        else:
            what = _describe(holder, pid)
        super().__init__(f"{store} is in use: {what}")

    @property
    def mountpoint(self) -> str | None:
        """The mount point the holder serves, if the holder is a mount (not a verb)."""
        return self.holder if self.holder and os.path.isabs(self.holder) else None


def _describe(holder: str | None, pid: int | None) -> str:
    by = f"by pid {pid}" if pid else "by another process"
    if not holder:
        return f"locked {by}"
    if os.path.isabs(holder):
        return f"mounted on {holder} {by}"
    return f"`cagefs {holder}` running {by}"


class StoreLock:
    """A held store lock; `release()` (or leaving the `with` block) lets it go."""

    def __init__(self, root: Path, fd: int | None, holder: str) -> None:
        self.root = root
        self.holder = holder
        self._fd = fd

    def __enter__(self) -> "StoreLock":
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()

    @property
    def held(self) -> bool:
        return self._fd is not None

    def claim(self) -> None:
        """Record the calling process as the holder: a forked daemon shares its parent's lock,
        and the refusal a second mount prints must name the daemon, not the parent."""
        if self._fd is not None:
            _record(self._fd, self.holder)

    def forget(self) -> None:
        """Close this process's descriptor without unlocking: after a fork, the parent hands
        the lock to the child (they share it, and an unlock by either would free it)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def release(self) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(OSError):  # a read-only store has no record to clear
            os.ftruncate(self._fd, 0)
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        self.forget()


def lock_store(root: Path, holder: str) -> StoreLock:
    """Take the store's lock for `holder` (a mount point or a verb name) without waiting.

    Raises StoreBusy, naming whoever holds it. A store on a read-only filesystem is locked
    through a read-only descriptor when its lock file exists (nothing can be recorded), and
    not at all when it does not: no process can write the store through that mount anyway.
    """
    path = root / LOCK_FILE
    flags = os.O_CLOEXEC | os.O_NOFOLLOW
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | flags, 0o600)
    except OSError as exc:
        if exc.errno != errno.EROFS:
            raise
        try:
            fd = os.open(path, os.O_RDONLY | flags)
        except FileNotFoundError:
            return StoreLock(root, None, holder)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        try:
            recorded_holder, pid = _read_record(fd)
        finally:
            os.close(fd)
        raise StoreBusy(root, recorded_holder, pid) from None
    except BaseException:
        os.close(fd)
        raise
    lock = StoreLock(root, fd, holder)
    lock.claim()
    return lock


def _record(fd: int, holder: str) -> None:
    text = f"{os.getpid()}\n{holder.replace(chr(10), '?')}\n".encode()
    # Written before the old record is cut, so that a reader never finds the file empty.
    with contextlib.suppress(OSError):  # read-only: the lock holds, only the record is missing
        os.pwrite(fd, text, 0)
        os.ftruncate(fd, len(text))


def _read_record(fd: int) -> tuple[str | None, int | None]:
    """(holder, pid) as the holder recorded them; (None, None) if it has not yet (it records
    right after locking) or the file is not what we wrote."""
    try:
        text = os.pread(fd, 4096, 0).decode()
        pid_text, holder = text.split("\n")[:2]
        return holder or None, int(pid_text)
    except (OSError, UnicodeDecodeError, ValueError):
        return None, None
