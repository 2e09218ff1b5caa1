"""The rest of a decrypted chunk handed to the kernel's page cache (FUSE notify_store).

A small read decrypts and authenticates a whole 64 KiB chunk (the age format) to answer one
4 KiB page; the other 15 pages are given to the kernel too, so that reads of them are answered
from its page cache, with no request. Random 4 KiB reads then cost one request per chunk
instead of one per page.

Two rules keep it safe:
- No deadlock: the kernel locks each page it stores, and a page may be locked by a read that
  waits for this daemon's answer (the read being answered, others in flight, readahead). So
  the pages of the read itself are left out, and the rest is stored on a thread of its own,
  never on the event loop, which goes on answering the reads those locks wait for.
- Never stale: a store carries the file's content as it was when the chunk was read. No store
  starts while the file has a writable handle or a truncate is under way (the caller checks,
  `Operations._writers`), and whoever is about to change the file waits first for the stores
  already queued for it (`settle`). A writer's pages are locked from before its request
  reaches the daemon, so a store that came after its change could overwrite it.

Stores are an optimisation: when the queue is full, or the kernel refuses one (it forgot the
inode, ENOENT), it is dropped.
"""

import collections
import logging
import threading
from collections.abc import Callable

import pyfuse3
import trio

from cagefs.age import Buffer

log = logging.getLogger("cagefs")
PAGE_SIZE = 4096
QUEUE_MAX = 32  # chunks waiting to be stored: at most 2 MiB held
CLOSE_WAIT = 5.0  # seconds

Store = Callable[[int, int, Buffer], None]
_Job = tuple[int, list[tuple[int, memoryview]]]


class PageStore:
    def __init__(self, store: Store = pyfuse3.notify_store) -> None:
        self._store = store
        self._jobs: collections.deque[_Job] = collections.deque()
        self._pending: collections.Counter[int] = collections.Counter()
        self._changed = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False

    def around(self, ino: int, offset: int, length: int, start: int, chunk: bytes) -> None:
        """Queue the pages of `chunk` (the plaintext at `start` of inode `ino`) that a read of
        [offset, offset + length) does not cover."""
        first = offset // PAGE_SIZE * PAGE_SIZE
        stop = -(-(offset + length) // PAGE_SIZE) * PAGE_SIZE
        view = memoryview(chunk)
        pieces = []
        if start < first:
            pieces.append((start, view[: first - start]))
        if stop < start + len(chunk):
            pieces.append((stop, view[max(stop - start, 0) :]))
        if not pieces:
            return
        with self._changed:
            if self._closed or len(self._jobs) >= QUEUE_MAX:
                return
            self._jobs.append((ino, pieces))
            self._pending[ino] += 1
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="page-store", daemon=True)
                self._thread.start()
            self._changed.notify_all()

    def pending(self, ino: int) -> bool:
        """Whether stores for `ino` are queued or under way."""
        with self._changed:
            return ino in self._pending

    async def settle(self, ino: int) -> None:
        """Wait until no store for `ino` is queued or under way (off the event loop: a store
        may wait for a read that the loop has still to answer)."""
        if self.pending(ino):
            await trio.to_thread.run_sync(self._wait_for, ino)

    def close(self) -> None:
        """Drop what is queued and wait for a store under way; before the FUSE session ends.

        A store can wait for a page whose read was left unanswered when the loop stopped
        (SIGTERM, --idle): it ends only when the unmount aborts that read, so the wait for it
        is bounded rather than a hang of the daemon's exit."""
        with self._changed:
            self._closed = True
            for ino, _ in self._jobs:
                self._done(ino)
            self._jobs.clear()
            self._changed.notify_all()
        if self._thread is not None:
            self._thread.join(CLOSE_WAIT)
            if self._thread.is_alive():
                log.warning("a page store still waits for the kernel; unmounting anyway")

    def _wait_for(self, ino: int) -> None:
        with self._changed:
            while ino in self._pending:
                self._changed.wait()

    def _done(self, ino: int) -> None:
        self._pending[ino] -= 1
        if self._pending[ino] <= 0:
            del self._pending[ino]

    def _run(self) -> None:
        while True:
            with self._changed:
                while not self._jobs and not self._closed:
                    self._changed.wait()
                if not self._jobs:
                    return
                ino, pieces = self._jobs.popleft()
            try:
                for at, piece in pieces:
                    self._store(ino, at, piece)
            except OSError as exc:  # ENOENT: the kernel forgot the inode; ENODEV: unmounted
                log.debug("storing pages of inode %d: %s", ino, exc.strerror)
            finally:
                with self._changed:
                    self._done(ino)
                    self._changed.notify_all()
