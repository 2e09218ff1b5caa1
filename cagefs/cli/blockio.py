"""Reading and writing the descriptors of `cagefs encrypt`/`decrypt` in large blocks.

A pipe hands over at most its capacity (64 KiB by default) per read, and its writer stops
while it is full: read in turn with the encryption, a pipe ran at a fifth of a file. So the
input is read ahead by a thread of its own (`read_blocks`), into a few fixed buffers, while
the engine seals or opens the block before (`cryptography` releases the GIL, as do reads);
pipes are enlarged to `PIPE_SIZE` so that the other side runs ahead too. Memory stays
`BLOCKS_AHEAD` blocks, whatever the stream's length.

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

from cagefs.age.stream import Buffer, Sink

BLOCK_SIZE = 1 << 20
BLOCKS_AHEAD = 3  # one being encrypted, one read ahead, one being filled
PIPE_SIZE = 1 << 20  # the default /proc/sys/fs/pipe-max-size


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


def _wait(fd: int, event: int) -> None:
    """Wait until a non-blocking `fd` is ready (or has failed: the retried call reports it)."""
    poller = select.poll()
    poller.register(fd, event)
    poller.poll()
