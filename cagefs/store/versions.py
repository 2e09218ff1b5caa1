"""New versions of backing files: written in `.cagefs/tmp/`, then published by rename (I2, I3).

A backing age file is never patched in place. Every change is a whole new version with a fresh
file key, written to a temp file on the store's filesystem and renamed over the old one only
after its data is durable. Renames are done in groups so that a burst of small files costs one
`syncfs` rather than one fsync each.
"""

import contextlib
import ctypes
import os
from collections.abc import Sequence
from pathlib import Path

from cagefs.age import PayloadReader, PayloadState, Recipient, open_file, start_file
from cagefs.age.recipients import Identity
from cagefs.store.layout import TEMP_PREFIX, tmp_dir

_libc = ctypes.CDLL(None, use_errno=True)
_libc.sync_file_range.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
_SYNC_FILE_RANGE_WRITE = 2
# Dirty ciphertext is handed to the disk in steps of this size while a version is written.
_WRITEBACK_STEP = 8 * 1024 * 1024


def syncfs(fd: int) -> None:
    """Flush the whole filesystem holding `fd`: one call for a group of new versions."""
    if _libc.syncfs(fd) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


class _EarlyWriteback:
    """Appends to a version's temp file and starts writing it to disk as it goes.

    Without this the kernel keeps a whole new version dirty in the page cache until publishing
    calls fsync/syncfs, which then waits for all of it at once: for a 1 GiB `dd conv=fsync`
    that wait was a quarter of the run. Starting writeback every few MiB (asynchronously:
    SYNC_FILE_RANGE_WRITE neither waits nor makes anything durable) overlaps the disk with
    encryption and keeps little dirty ciphertext in the page cache. Durability is still only
    what publishing's fsync/syncfs guarantees.
    """

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._written = 0
        self._started = 0

    def __call__(self, data: bytes | memoryview) -> None:
        write_all(self._fd, data)
        self._written += len(data)
        if self._written - self._started >= _WRITEBACK_STEP:
            # Advisory: a filesystem that cannot (EINVAL, ESPIPE) just flushes at publish.
            _libc.sync_file_range(
                self._fd, self._started, self._written - self._started, _SYNC_FILE_RANGE_WRITE
            )
            self._started = self._written


class NewVersion:
    """A version being written to a temp file; sealed once complete, then published or dropped."""

    def __init__(self, root: Path, recipients: Sequence[Recipient]) -> None:
        self.path = _unique_temp_path(root)
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            self._writer = start_file(_EarlyWriteback(self.fd), recipients)
        except BaseException:  # a full disk fails the header: leave no empty temp behind
            self.discard()
            raise

    def write(self, data: bytes | memoryview) -> None:
        self._writer.write(data)

    def seal(self) -> None:
        self._writer.close()

    def hand_over(self) -> PayloadState:
        """Stop writing here: another writer (a sealer process) appends the rest to `fd`."""
        return self._writer.hand_over()

    def open_reader(self, identities: Sequence[Identity]) -> PayloadReader:
        """Random access to the sealed version (served until it is published, I8)."""
        return open_file(self.fd, identities).reader

    def remove(self) -> None:
        """Delete the unpublished temp; a reader holding `fd` keeps working (like unlink(2))."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)

    def discard(self) -> None:
        """Forget an unpublished version entirely: descriptor and temp file."""
        os.close(self.fd)
        self.remove()


def _unique_temp_path(root: Path) -> str:
    return str(tmp_dir(root) / f"{TEMP_PREFIX}{os.urandom(12).hex()}")


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
