"""New versions of backing files: written in `.cagefs/tmp/`, then published by rename (I2, I3).

A backing age file is never patched in place. Every change is a whole new version with a fresh
file key, written to a temp file on the store's filesystem and renamed over the old one only
after its data is durable. Renames are done in groups so that a burst of small files costs one
`syncfs` rather than one fsync each.
"""

import contextlib
import ctypes
import errno
import functools
import logging
import os
import threading
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path

from cagefs.age import PayloadReader, PayloadState, Recipient, open_file, start_file
from cagefs.age.header import Stanza
from cagefs.age.recipients import Identity
from cagefs.age.stream import NONCE_SIZE, payload_size
from cagefs.errors import CageError
from cagefs.store.auth import FileAuth
from cagefs.store.filekeys import FileKeys
from cagefs.store.layout import META_DIR, SUFFIX, TEMP_PREFIX, tmp_dir
from cagefs.store.paths import free_bytes

_libc = ctypes.CDLL(None, use_errno=True)
_libc.sync_file_range.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
_libc.linkat.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
_AT_FDCWD = -100
_AT_SYMLINK_FOLLOW = 0x400
_SYNC_FILE_RANGE_WRITE = 2
_FALLOC_FL_KEEP_SIZE = 1
RECOVERED_DIR = f"{META_DIR}/recovered"  # versions an unmount could not publish
_LARGEST_FILE = 2**63 - 1  # off_t
_HEADER_ROOM = 64 * 1024  # more than a header for a few recipients takes
# Dirty ciphertext is handed to the disk in steps of this size while a version is written.
_WRITEBACK_STEP = 8 * 1024 * 1024
READY_VERSIONS = 32  # new versions kept made ahead (ReadyVersions)
_RETRY_AFTER = 5.0  # seconds before the thread tries again after a failure
_FREE_MARGIN = 64 * 1024 * 1024  # no version is made ahead with less free than this
log = logging.getLogger(__name__)


def syncfs(fd: int) -> None:
    """Flush the whole filesystem holding `fd`: one call for a group of new versions."""
    if _libc.syncfs(fd) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def start_writeback(fd: int, offset: int = 0, length: int = 0) -> None:
    """Start writing a file's dirty pages out (from `offset`, `length` bytes; 0: to the end),
    without waiting (sync_file_range)."""
    if _libc.sync_file_range(fd, offset, length, _SYNC_FILE_RANGE_WRITE) != 0:
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
            with contextlib.suppress(OSError):
                start_writeback(self._fd, self._started, self._written - self._started)
            self._started = self._written


class NewVersion:
    """A version being written to a temp file; sealed once complete, then published or dropped.

    Its header carries the store's proof of origin (`auth`), so the mount will accept it. The
    version keeps its file key, to be read back (I8) without unwrapping it again: an
    encrypt-only mount has no identity that could.
    """

    def __init__(
        self,
        root: Path,
        recipients: Sequence[Recipient],
        auth: FileAuth,
        keys: FileKeys | None = None,
        unnamed: bool = False,
    ) -> None:
        """`keys`, when given, learns the new file key (the mount opens the file again later).
        `unnamed`: made ahead of need (`ReadyVersions`), an O_TMPFILE inode that `name` links
        into `.cagefs/tmp/` once it is taken: one a crash or an unmount leaves goes with it."""
        self._name = _unique_temp_path(root)  # its temp name (for one made unnamed: to be)
        if unnamed:
            self.path = ""
            self.fd = os.open(tmp_dir(root), os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o600)
        else:
            self.path = self._name
            flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
            self.fd = os.open(self.path, flags, 0o600)
        self._file_key = b""
        self.proof = b""  # its proof TAG: what journal records name it by (store/journal.py)

        def tag(file_key: bytes, stanzas: Sequence[Stanza]) -> Sequence[Stanza]:
            self._file_key = file_key
            proof = auth.tag(file_key, stanzas)
            self.proof = proof[0].body
            if keys is not None:
                keys.remember([*stanzas, *proof], file_key)
            return proof

        try:
            self._writer = start_file(_EarlyWriteback(self.fd), recipients, tag)
            self._header_size = os.fstat(self.fd).st_size - NONCE_SIZE
        except BaseException:  # a full disk fails the header: leave no empty temp behind
            self.discard()
            raise

    def name(self) -> None:
        """Give a version made `unnamed` its temp name, from which it is published."""
        # (os.link would call link(2), which links the /proc symlink itself: EXDEV)
        source = f"/proc/self/fd/{self.fd}".encode()
        if _libc.linkat(_AT_FDCWD, source, _AT_FDCWD, self._name.encode(), _AT_SYMLINK_FOLLOW):
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
        self.path = self._name

    def reserve(self, plaintext_size: int) -> None:
        """Allocate the disk space this version takes once it holds `plaintext_size` bytes,
        without changing its size: writing up to there can then not fail with ENOSPC.
        Raises ENOSPC (or EDQUOT) now if the room is not there; a filesystem without
        fallocate gets no reservation."""
        end = self._header_size + payload_size(plaintext_size)
        start = os.fstat(self.fd).st_size
        if end > start and _libc.fallocate(self.fd, _FALLOC_FL_KEEP_SIZE, start, end - start):
            err = ctypes.get_errno()
            if err not in (errno.EOPNOTSUPP, errno.ENOSYS):
                raise OSError(err, os.strerror(err))

    def write(self, data: bytes | memoryview) -> None:
        self._writer.write(data)

    def seal(self) -> None:
        self._writer.close()

    def hand_over(self) -> PayloadState:
        """Stop writing here: another writer (a sealer process) appends the rest to `fd`."""
        return self._writer.hand_over()

    def open_reader(self, identities: Sequence[Identity] = ()) -> PayloadReader:
        """Random access to the sealed version (served until it is published, I8), through
        its own file key (`identities` are only a fallback, never needed: kept for callers)."""
        return open_file(self.fd, [_KnownKey(self._file_key), *identities]).reader

    def remove(self) -> None:
        """Delete the unpublished temp; a reader holding `fd` keeps working (like unlink(2))."""
        if self.path:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)

    def keep_aside(self, root: Path) -> str:
        """Move a version that could not be published to `.cagefs/recovered/`, where the next
        mount leaves it (it is a complete age file); returns its path in the store."""
        directory = root / RECOVERED_DIR
        directory.mkdir(mode=0o700, exist_ok=True)
        kept = directory / f"{os.path.basename(self.path)}{SUFFIX}"
        os.rename(self.path, kept)
        self.path = str(kept)
        return str(kept.relative_to(root))

    def discard(self) -> None:
        """Forget an unpublished version entirely: descriptor and temp file."""
        os.close(self.fd)
        self.remove()


class ReadyVersions:
    """New versions made ahead of need by a thread, so that a `create` takes one instead of
    waiting for a temp file's inode and a header (a fresh file key wrapped to every recipient,
    with its proof): 0.7 ms per file of an untar on the event loop. Each is taken once (I2).

    They are unnamed (O_TMPFILE) until taken: nothing shows in `.cagefs/tmp/` and nothing is
    left by a crash. Where that cannot be had, or none is ready, `take` makes one as before.
    The thread starts at the first `take` (a mount that creates nothing makes nothing).
    """

    def __init__(
        self, root: Path, make: Callable[..., NewVersion], count: int = READY_VERSIONS
    ) -> None:
        self._make = make
        self._count = count
        self._ready: deque[NewVersion] = deque()
        self._lock = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._failing = False
        self._root = root

    def take(self) -> NewVersion:
        with self._lock:
            version = self._ready.popleft() if self._ready else None
            if self._thread is None and not self._closed:
                self._thread = threading.Thread(
                    target=self._work, name="cagefs-versions", daemon=True
                )
                self._thread.start()
            self._lock.notify()
        if version is None:
            return self._make()
        try:
            version.name()
        except BaseException:
            version.discard()
            raise
        return version

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._lock.notify()
        if self._thread is not None:
            self._thread.join()
        while self._ready:
            self._ready.popleft().discard()

    def _work(self) -> None:
        while True:
            with self._lock:
                while not self._closed and len(self._ready) >= self._count:
                    self._lock.wait()
                if self._closed:
                    return
            try:
                if free_bytes(self._root) < _FREE_MARGIN:  # what they hold is for the files, now
                    raise OSError(errno.ENOSPC, "the disk is nearly full")
                version = self._make(unnamed=True)
            except OSError as exc:  # a full disk, no O_TMPFILE: `take` makes them meanwhile
                if not self._failing:
                    log.info("new versions are not made ahead for now: %s", exc.strerror or exc)
                self._failing = True
                with self._lock:
                    self._lock.wait(_RETRY_AFTER)
                continue
            except Exception:  # a bug: `take` makes them from now on, the mount goes on
                log.exception("new versions made ahead: stopped")
                return
            self._failing = False
            with self._lock:
                if self._closed:
                    version.discard()
                    return
                self._ready.append(version)


def check_room(root: Path, size: int, new_size: int) -> None:
    """Refuse at once to grow a file from `size` to `new_size` bytes of plaintext when its
    version could never be written: EFBIG past the largest file the store's filesystem can
    hold, ENOSPC when the growth alone does not fit on it. age has no holes, so a sparse size
    (`truncate -s 1P`, a write far past the end) is stored as that many encrypted zeros."""
    if _HEADER_ROOM + payload_size(new_size) > largest_file(root):
        raise OSError(errno.EFBIG, os.strerror(errno.EFBIG))
    if payload_size(new_size) - payload_size(size) > free_bytes(root):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@functools.cache
def largest_file(root: Path) -> int:
    """The largest file the store's filesystem can hold (ext4 with 4 KiB blocks: 16 TiB, tmpfs:
    off_t's limit), found once by resizing a nameless temp file: sparse, nothing is written."""
    try:
        fd = os.open(tmp_dir(root), os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o600)
    except OSError:  # a filesystem without O_TMPFILE: only off_t limits what is asked
        return _LARGEST_FILE
    fits, too_large = 0, _LARGEST_FILE + 1
    try:
        while too_large - fits > 1:
            size = (fits + too_large) // 2
            try:
                os.ftruncate(fd, size)
            except OSError as exc:
                if exc.errno not in (errno.EFBIG, errno.EINVAL):
                    return _LARGEST_FILE  # cannot tell: ENOSPC stays the answer for large sizes
                too_large = size
            else:
                fits = size
    finally:
        os.close(fd)
    return fits


class _KnownKey:
    """An identity for one file whose key we made: the header's MAC is still checked."""

    def __init__(self, file_key: bytes) -> None:
        self._file_key = file_key

    def unwrap(self, stanzas: Sequence[Stanza]) -> bytes | None:
        return self._file_key or None

    def recipient(self) -> Recipient:
        raise CageError("a version's own file key has no recipient")


def _unique_temp_path(root: Path) -> str:
    return str(tmp_dir(root) / f"{TEMP_PREFIX}{os.urandom(12).hex()}")
