"""Sequential writes encrypted on a worker thread, so the event loop only receives data.

Sealing and writing a 1 MiB request costs the event loop about as much as receiving it. A
stream hands each request to a worker thread and answers the kernel at once; the next request
then arrives while the previous one is being encrypted, and both cores work. The backlog is
bounded (I7), and a failure on the worker (a full disk) is raised by the next write, by
flush (close(2)) or by seal, never lost.
"""

import threading
from collections import deque

from cagefs.store.versions import NewVersion

_INLINE_UNTIL = 1024 * 1024  # small files never pay for a thread
BACKLOG_LIMIT = 16 * 1024 * 1024


class StreamWriter:
    def __init__(self, version: NewVersion) -> None:
        self.version = version
        self.size = 0
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
        if self._thread is None and self.size + len(data) <= _INLINE_UNTIL:
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
        """Wait until everything accepted is written; raise what the worker hit, if anything."""
        with self._cond:
            while self._backlog and self._error is None:
                self._cond.wait()
        self._raise_error()

    def seal(self) -> NewVersion:
        self.drain()
        self._stop()
        self.version.seal()
        return self.version

    def discard(self) -> None:
        self._stop()
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
        while True:
            with self._cond:
                while not self._queue and not self._stopping:
                    self._cond.wait()
                if not self._queue:
                    return
                data = self._queue.popleft()
            try:
                self.version.write(data)
            except BaseException as exc:  # handed to the event loop by the next call
                with self._cond:
                    self._error = exc
                    self._queue.clear()
                    self._backlog = 0
                    self._cond.notify_all()
                return
            with self._cond:
                self._backlog -= len(data)
                self._cond.notify_all()
