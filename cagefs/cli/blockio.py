"""Reading and writing the descriptors of `cagefs encrypt`/`decrypt` in large blocks.

A pipe hands over at most its capacity (64 KiB by default) per read, and its writer stops
while it is full: read in turn with the encryption, a pipe ran at a fifth of a file. So the
input is read ahead by a thread of its own (`read_blocks`), into a few fixed buffers, while
the engine seals or opens the block before (`cryptography` releases the GIL, as do reads and
writes); the output is written behind on another (`WriteBehind`), from buffers it lends the
engine to seal or open into, so that a slow reader or the page cache copy does not stop the
encryption either. Pipes are enlarged to `PIPE_SIZE` so that the other side runs ahead too.
Memory stays `BLOCKS_AHEAD` blocks each way, whatever the stream's length.

Descriptors may be in non-blocking mode (inherited from a shell or a parent): a read or write
that would block waits for the descriptor instead of taking it as the end or failing.
"""

import contextlib
import fcntl
import os
import queue
import select
import stat
import threading
from collections.abc import Iterator

from cagefs.age.stream import Buffer, Pread, Sink

BLOCK_SIZE = 1 << 20
BLOCKS_AHEAD = 3  # one being encrypted, one read ahead, one being filled
PIPE_SIZE = 1 << 20  # the default /proc/sys/fs/pipe-max-size
_DONE = None  # what ends a WriteBehind's queue


def enlarge_pipe(fd: int) -> None:
    """Give a pipe `PIPE_SIZE` bytes of room, if it is a pipe and the system allows it."""
    if stat.S_ISFIFO(os.fstat(fd).st_mode):
        with contextlib.suppress(OSError):  # EPERM past the user's pipe quota: keep it as is
            if fcntl.fcntl(fd, fcntl.F_GETPIPE_SZ) < PIPE_SIZE:
                fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, PIPE_SIZE)


def read_blocks(fd: int, block_size: int = BLOCK_SIZE) -> Iterator[memoryview]:
    """`fd` read to its end, in blocks of `block_size` bytes (the last one shorter), read ahead
    on a thread. A block stays valid until the next is asked for: then its buffer is refilled.
    Read errors are raised here, in order, after the blocks read before them."""
    enlarge_pipe(fd)
    free: queue.SimpleQueue[bytearray | None] = queue.SimpleQueue()
    full: queue.SimpleQueue[tuple[bytearray, int] | BaseException | None] = queue.SimpleQueue()
    for _ in range(BLOCKS_AHEAD):
        free.put(bytearray(block_size))

    def read_ahead() -> None:
        try:
            while (buffer := free.get()) is not None:
                size = _fill(fd, buffer)
                if size:
                    full.put((buffer, size))
                if size < len(buffer):
                    break
            full.put(None)
        except BaseException as exc:  # handed to the consumer, which raises it
            full.put(exc)

    # A daemon thread: one blocked on a pipe whose writer never ends must not hold up the exit.
    threading.Thread(target=read_ahead, name="cagefs-read-ahead", daemon=True).start()
    try:
        while (item := full.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            buffer, size = item
            yield memoryview(buffer)[:size]
            free.put(buffer)
    finally:
        free.put(None)  # stop the reader at its next block (it may be blocked in a read)


def _fill(fd: int, buffer: bytearray) -> int:
    """Read into `buffer` until it is full or the input ends (a short read is neither)."""
    view = memoryview(buffer)
    fill = 0
    while fill < len(view):
        try:
            got = os.readv(fd, [view[fill:]])
        except BlockingIOError:
            _wait(fd, select.POLLIN)
            continue
        if not got:
            break
        fill += got
    return fill


def pread_reusing(fd: int) -> Pread:
    """`os.pread` on `fd` into one buffer that every call reuses, for `PayloadReader.readinto`
    (which needs a read's bytes only until the next): a fresh 2 MiB `bytes` per batch cost
    `cagefs decrypt FILE` a page fault per 4 KiB read (120 000 per GiB, 0.4-1 CPU-s)."""
    buffer = memoryview(bytearray())

    def pread(size: int, offset: int) -> Buffer:
        nonlocal buffer
        if len(buffer) < size:
            buffer = memoryview(bytearray(size))
        done = 0
        while done < size:
            got = os.preadv(fd, [buffer[done:size]], offset + done)
            if not got:  # end of file: the reader reports the short read
                break
            done += got
        return buffer[:done]

    return pread


@contextlib.contextmanager
def written_behind(fd: int) -> Iterator["WriteBehind"]:
    """A `WriteBehind` on `fd` that has written everything when the block ends without error."""
    sink = WriteBehind(fd)
    try:
        yield sink
    except BaseException:
        sink.abandon(wait=stat.S_ISREG(os.fstat(fd).st_mode))
        raise
    sink.finish()


def fd_sink(fd: int) -> Sink:
    """Write whole buffers to `fd` unbuffered (a write may take only part of one)."""
    enlarge_pipe(fd)

    def write(data: Buffer) -> None:
        view = memoryview(data).cast("B")
        while view:
            try:
                view = view[os.write(fd, view) :]
            except BlockingIOError:
                _wait(fd, select.POLLOUT)

    return write


class WriteBehind:
    """A sink that writes to `fd` on a thread of its own, in order (a `LendingSink`).

    The engine seals or opens each batch straight into a buffer lent by `lend`, and that
    buffer is written while the next batch is being made; anything else passed (a header, a
    nonce, armor) is copied first. `finish` waits for everything to be written; a write error
    is raised by the next call after it happened, or by `finish`.
    """

    def __init__(self, fd: int) -> None:
        self._write = fd_sink(fd)
        self._free: queue.SimpleQueue[bytearray] = queue.SimpleQueue()
        self._queue: queue.SimpleQueue[tuple[Buffer, bytearray | None] | None] = (
            queue.SimpleQueue()
        )
        for _ in range(BLOCKS_AHEAD):
            self._free.put(bytearray())  # sized by the first lend
        self._lent: list[bytearray] = []
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="cagefs-write-behind", daemon=True)
        self._thread.start()

    def lend(self, size: int) -> memoryview:
        self._raise_error()
        buffer = self._free.get()  # waits while every buffer is queued or being written
        if len(buffer) < size:
            buffer = bytearray(size)
        self._lent.append(buffer)
        return memoryview(buffer)[:size]

    def __call__(self, data: Buffer) -> None:
        self._raise_error()
        owner = data.obj if isinstance(data, memoryview) else None
        lent = next((b for b in self._lent if b is owner), None)
        if lent is not None:  # it goes back to the free buffers once written
            self._lent = [b for b in self._lent if b is not lent]
            self._queue.put((data, lent))
        else:
            self._queue.put((bytes(data), None))

    def finish(self) -> None:
        """Wait until everything passed is written; raise the write error, if there was one."""
        self._queue.put(_DONE)
        self._thread.join()
        self._raise_error()

    def abandon(self, wait: bool) -> None:
        """Stop writing (after a failure elsewhere). `wait` for a write under way to end: not
        on a pipe, where it may wait for a reader forever."""
        self._error = self._error or _Abandoned()
        self._queue.put(_DONE)
        if wait:
            self._thread.join()

    def _run(self) -> None:
        while (item := self._queue.get()) is not _DONE:
            data, lent = item
            if self._error is None:
                try:
                    self._write(data)
                except BaseException as exc:  # raised by the caller's next call
                    self._error = exc
            if lent is not None:
                self._free.put(lent)

    def _raise_error(self) -> None:
        if self._error is not None:
            raise self._error


class _Abandoned(Exception):
    pass


def _wait(fd: int, event: int) -> None:
    """Wait until a non-blocking `fd` is ready (or has failed: the retried call reports it)."""
    poller = select.poll()
    poller.register(fd, event)
    poller.poll()
