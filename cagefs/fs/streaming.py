"""Sequential writes sealed off the event loop, so the event loop only receives data.

Sealing and writing a 1 MiB request costs the event loop about as much as receiving it. A
stream queues each request and answers the kernel at once; a worker thread passes the queue on
to a sealer process (`cagefs.store.sealer`), which seals it with a GIL of its own, or seals it
itself when no sealer process can be had. The next request then arrives while the previous one
is being sealed, and both cores work. The backlog is bounded (I7), and a failure (a full disk)
is raised by the next write, by flush (close(2)) or by seal, never lost.
"""

import errno
import threading
from collections import deque
from collections.abc import Iterable

from cagefs.store.sealer import SLOT_SIZE, SealerError, SealerPool, SealJob
from cagefs.store.versions import NewVersion

INLINE_UNTIL = 1024 * 1024  # small files never pay for a thread or a sealer
BACKLOG_LIMIT = 16 * 1024 * 1024


class StreamWriter:
    def __init__(self, version: NewVersion, sealers: SealerPool) -> None:
        self.version = version
        self.size = 0
        self._sealers = sealers
        self._job: SealJob | None = None
        self._queue: deque[bytes] = deque()
        self._backlog = 0
        self._cond = threading.Condition()
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None
        self._stopping = False

    @property
    def congested(self) -> bool:
        return self._backlog > BACKLOG_LIMIT

    def write(self, data: bytes) -> None:
        self._raise_error()
        if self._thread is None and self.size + len(data) <= INLINE_UNTIL:
            self.version.write(data)
        else:
            self._start()
            with self._cond:
                self._queue.append(bytes(data))
                self._backlog += len(data)
                self._cond.notify_all()
        self.size += len(data)

    def wait_uncongested(self) -> None:
        """Block (on a helper thread, not the event loop) until the backlog has room."""
        with self._cond:
            while self._backlog > BACKLOG_LIMIT and self._error is None:
                self._cond.wait()

    def drain(self) -> None:
        """Wait until everything accepted is passed on; raise what the worker hit, if anything."""
        with self._cond:
            while self._backlog and self._error is None:
                self._cond.wait()
        self._raise_error()

    def seal(self) -> NewVersion:
        self.drain()
        self._stop()
        if self._job is None:
            self.version.seal()
        else:
            sealed = self._job.finish()
            self._sealers.give_back(self._job.sealer)
            self._job = None
            if sealed != self.size:  # cheap insurance: never publish a version that lost data
                raise SealerError(errno.EIO, f"sealer wrote {sealed} bytes of {self.size}")
        return self.version

    def discard(self) -> None:
        self._stop()
        if self._job is not None:
            self._sealers.retire(self._job.sealer)
            self._job = None
        self.version.discard()

    def _start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="cagefs-stream", daemon=True)
            self._thread.start()

    def _stop(self) -> None:
        if self._thread is not None:
            with self._cond:
                self._stopping = True
                self._cond.notify_all()
            self._thread.join()
            self._thread = None

    def _raise_error(self) -> None:
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        try:
            self._hand_over_to_sealer()
            while batch := self._next_batch():
                if self._job is not None:
                    self._job.write(batch)
                else:
                    for data in batch:
                        self.version.write(data)
                with self._cond:
                    self._backlog -= sum(len(data) for data in batch)
                    self._cond.notify_all()
        except BaseException as exc:  # handed to the event loop by the next call
            with self._cond:
                self._error = exc
                self._queue.clear()
                self._backlog = 0
                self._cond.notify_all()

    def _hand_over_to_sealer(self) -> None:
        sealer = self._sealers.take()
        if sealer is not None:
            try:
                self._job = SealJob(sealer, self.version.fd, self.version.hand_over())
            except BaseException:
                self._sealers.retire(sealer)
                raise

    def _next_batch(self) -> list[bytes]:
        """Queued writes up to a sealer slot's size (at least one); empty once stopped."""
        with self._cond:
            while not self._queue and not self._stopping:
                self._cond.wait()
            batch, size = [], 0
            while self._queue and (not batch or size + len(self._queue[0]) <= SLOT_SIZE):
                size += len(self._queue[0])
                batch.append(self._queue.popleft())
            return batch


def write_out(version: NewVersion, chunks: Iterable[bytes], sealers: SealerPool) -> NewVersion:
    """Write a whole new version from `chunks` and seal it, the way a stream is written (past
    the first MiB, by a sealer process). Blocks while the sealer is behind: call it on a
    worker thread. On failure the version is discarded."""
    stream = StreamWriter(version, sealers)
    try:
        for chunk in chunks:
            stream.write(chunk)
            stream.wait_uncongested()
        return stream.seal()
    except BaseException:
        stream.discard()
        raise
