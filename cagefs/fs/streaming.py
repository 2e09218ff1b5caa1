"""Sequential writes passed to a sealer process, so that the event loop only copies the data.

Sealing and writing a 1 MiB request costs the event loop about as much as receiving it. Past
its first MiB, a stream copies each request into the ring of a sealer process
(`cagefs.store.sealer`), which seals it with a GIL of its own, and the kernel is answered at
once: the next request arrives while the previous one is being sealed, and both cores work.

The copy into the ring is the only one the daemon makes of the data: with pyfuse3 patched to
lend its receive buffer (`borrow_write_buffers`, see scripts/install.sh) the request is not
copied into a `bytes` first. So `write` must be done with its buffer when it returns. On the
event loop, `make_room` first waits, without blocking the loop, for what `write` would
otherwise block for: a sealer process to start and room in its ring (16 MiB, the bound on
what is in flight, I7). A failure (a full disk) is raised by the next write, by flush
(close(2)) or by seal, never lost.

When no sealer process can be had (more large files streaming at once than `MAX_SEALERS`, or
none would start), the stream seals in the calling thread: slower, just as correct.
"""

import errno
from collections.abc import Callable, Iterable
from typing import ParamSpec, TypeVar

import trio

from cagefs.age import Buffer
from cagefs.store.sealer import RING_SIZE, SealerError, SealerPool, SealJob
from cagefs.store.versions import NewVersion

INLINE_UNTIL = 1024 * 1024  # small files never pay for a sealer
P = ParamSpec("P")
T = TypeVar("T")


class StreamWriter:
    def __init__(self, version: NewVersion, sealers: SealerPool) -> None:
        self.version = version
        self.size = 0
        self._sealers = sealers
        self._job: SealJob | None = None
        self._sealing_here = False  # no sealer could be had
        self._error: BaseException | None = None

    async def make_room(self, size: int) -> None:
        """Make sure a `write` of `size` bytes will not wait, letting other requests run."""
        self._raise_error()
        if self._needs_job(size):
            await trio.to_thread.run_sync(self._guarded, self._open_job)
        job = self._job
        size = min(size, RING_SIZE)  # more than the ring holds: `write` waits for the rest
        if job is None or job.room() >= size:
            return
        self._guarded(job.collect)  # acknowledgements already there cost no wait
        while job.room() < size:
            await trio.lowlevel.wait_readable(job.fileno())
            self._guarded(job.collect)

    def write(self, data: Buffer) -> None:
        """Take `data`, which follows everything written so far; it is copied or sealed
        before this returns."""
        self._raise_error()
        if self._needs_job(len(data)):
            self._guarded(self._open_job)
        if self._job is not None:
            self._guarded(self._job.write, data)
        else:
            self.version.write(data)
        self.size += len(data)

    async def settle(self) -> None:
        """close(2) of a descriptor: report any failure so far and make sealing the rest safe.

        The space the sealed version will take is reserved first (`NewVersion.reserve`), so
        what is still to be written, the held-back last chunk above all, cannot meet a full
        disk at the last release, whose errors reach nobody. Then everything in the ring is
        passed on and waited for (without blocking the loop), so that a failure while writing
        what came before reaches this close(2).
        """
        self._raise_error()
        self._guarded(self.version.reserve, self.size)
        job = self._job
        if job is None:
            return
        self._guarded(job.send)
        self._guarded(job.collect)
        while not job.drained():
            await trio.lowlevel.wait_readable(job.fileno())
            self._guarded(job.collect)

    def seal(self) -> NewVersion:
        self._raise_error()
        if self._job is None:
            self.version.seal()
        else:
            sealed = self._guarded(self._job.finish)
            self._sealers.give_back(self._job.sealer)
            self._job = None
            if sealed != self.size:  # cheap insurance: never publish a version that lost data
                raise SealerError(errno.EIO, f"sealer wrote {sealed} bytes of {self.size}")
        return self.version

    def discard(self) -> None:
        if self._job is not None:
            self._sealers.retire(self._job.sealer)
            self._job = None
        self.version.discard()

    def _needs_job(self, size: int) -> bool:
        return self._job is None and not self._sealing_here and self.size + size > INLINE_UNTIL

    def _open_job(self) -> None:
        """Hand the payload over to a sealer process (started if none is idle: it blocks)."""
        sealer = self._sealers.take()
        if sealer is None:
            self._sealing_here = True
            return
        try:
            self._job = SealJob(sealer, self.version.fd, self.version.hand_over())
        except BaseException:
            self._sealers.retire(sealer)
            raise

    def _guarded(self, call: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """A sealer that failed has stopped: its error answers every later call as well."""
        try:
            return call(*args, **kwargs)
        except BaseException as exc:
            self._error = exc
            raise

    def _raise_error(self) -> None:
        if self._error is not None:
            raise self._error


def write_out(version: NewVersion, chunks: Iterable[Buffer], sealers: SealerPool) -> NewVersion:
    """Write a whole new version from `chunks` and seal it, the way a stream is written (past
    the first MiB, by a sealer process). Blocks while the sealer is behind: call it on a
    worker thread. On failure the version is discarded."""
    stream = StreamWriter(version, sealers)
    try:
        for chunk in chunks:
            stream.write(chunk)
        return stream.seal()
    except BaseException:
        stream.discard()
        raise
