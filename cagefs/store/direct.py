"""O_DIRECT I/O on backing files: ciphertext that skips the page cache, both ways.

Writing (`DirectAppender`): a new version is written once and read back, if at all, through
the daemon's chunk cache, so caching its ciphertext in the kernel only costs: a copy into the
page cache, then writeback. With O_DIRECT the disk reads the data straight from the
appender's buffers.

Each of the appender's two page-aligned buffers stands for an aligned stretch of the file;
when one holds `FLUSH` bytes, a writer thread writes its aligned part direct while sealing goes
on into the other. A payload continues at an arbitrary offset (after the header and the
daemon's first MiB), so the first buffer starts with a few bytes that are already in the file:
they are skipped, and the rest of their block, like the tail left at the end, goes through the
ordinary descriptor. The appender lends its buffers to the `PayloadWriter` (a `LendingSink`),
which seals straight into them: no copy of the output.

Reading (`ReadAhead`): a sequential reader's next blocks of ciphertext are read on I/O threads
straight into page-aligned buffers while the daemon decrypts the current one. Through the page
cache, a cold 1 GiB `dd` spent 16 % of all CPU copying ciphertext out of it, and the disk was
waited for one block at a time (a third of the machine idle).

O_DIRECT needs offsets, lengths and memory aligned to the device's block size; `ALIGN` suits
512-byte and 4 KiB devices alike. Where O_DIRECT is refused (a filesystem without it), every
byte takes the ordinary path: slower, never wrong.
"""

import errno
import mmap
import os
import threading
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass

from cagefs.pools import LazyPool

ALIGN = 4096
FLUSH = 4 * 1024 * 1024
CAPACITY = FLUSH + 4 * 1024 * 1024  # larger writes are simply taken in several goes
READ_BLOCK_MAX = 1024 * 1024 + 64 * 1024  # a 1 MiB read's ciphertext, aligned, fits
_READ_THREADS = 2


def new_buffers() -> list[memoryview]:
    """The two page-aligned buffers an appender fills in turn; reusable job after job."""
    return [memoryview(mmap.mmap(-1, CAPACITY)) for _ in range(2)]


class DirectAppender:
    """A sink for `PayloadWriter` that appends to `fd` from `start`; `close` writes the rest."""

    def __init__(self, fd: int, start: int, buffers: list[memoryview]) -> None:
        self._fd = fd
        self._direct = _open_direct(fd, os.O_WRONLY)
        self._refused = False  # O_DIRECT writes failed with EINVAL: write the ordinary way
        self._buffers = buffers
        self._current = 0
        self._lead = start % ALIGN  # bytes of the current buffer's first block already written
        self._base = start - self._lead  # the file offset of the current buffer's first byte
        self._fill = self._lead
        self._lent: memoryview | None = None
        self._writer: threading.Thread | None = None
        self._error: BaseException | None = None

    def lend(self, size: int) -> memoryview:
        """Room for the next `size` bytes, to be filled and then passed to this appender."""
        at = self._fill if self._direct is not None else 0  # the ordinary way writes at once
        if at + size > CAPACITY:  # more than a buffer holds: the caller's bytes are copied in
            self._lent = None
            return memoryview(bytearray(size))
        self._lent = self._buffers[self._current][at : at + size]
        return self._lent

    def __call__(self, data: bytes | memoryview) -> None:
        lent, self._lent = data is self._lent, None
        view = memoryview(data).cast("B")
        if self._direct is None:
            _pwrite_all(self._fd, view, self._base + self._fill)
            self._fill += len(view)
            return
        if lent:
            self._fill += len(view)
        else:
            self._copy_in(view)
        if self._fill >= FLUSH:
            self._flush()

    def _copy_in(self, view: memoryview) -> None:
        while view:
            take = min(len(view), CAPACITY - self._fill)
            self._buffers[self._current][self._fill : self._fill + take] = view[:take]
            self._fill += take
            view = view[take:]
            if self._fill >= FLUSH:
                self._flush()

    def close(self) -> None:
        """Write everything still buffered; raise the first error the writer thread met."""
        try:
            if self._direct is not None:
                self._wait()
                rest = self._buffers[self._current][self._lead : self._fill]
                _pwrite_all(self._fd, rest, self._base + self._lead)
        finally:
            self.abandon()

    def abandon(self) -> None:
        """Stop without writing what is buffered (the version is being given up)."""
        if self._writer is not None:
            self._writer.join()
            self._writer = None
        if self._direct is not None:
            os.close(self._direct)
            self._direct = None

    def _flush(self) -> None:
        """Hand the aligned part of the current buffer to the writer thread, carry the rest."""
        self._wait()
        buffer = self._buffers[self._current]
        size = self._fill - self._fill % ALIGN
        if self._lead:  # the rest of a block the file already has part of: the ordinary way
            _pwrite_all(self._fd, buffer[self._lead : ALIGN], self._base + self._lead)
        skip = ALIGN if self._lead else 0
        self._writer = threading.Thread(
            target=self._write_direct, args=(buffer[skip:size], self._base + skip), daemon=True
        )
        self._writer.start()
        rest = self._fill - size
        self._current = 1 - self._current
        self._buffers[self._current][:rest] = buffer[size : self._fill]
        self._base += size
        self._lead = 0
        self._fill = rest

    def _write_direct(self, data: memoryview, offset: int) -> None:
        try:
            while data and not self._refused:
                try:
                    written = os.pwrite(self._direct, data, offset)  # type: ignore[arg-type]
                except OSError as exc:
                    if exc.errno != errno.EINVAL:
                        raise
                    self._refused = True
                    break
                if written == 0 or written % ALIGN:  # short: the rest goes the ordinary way
                    data, offset = data[written:], offset + written
                    break
                data, offset = data[written:], offset + written
            _pwrite_all(self._fd, data, offset)
        except BaseException as exc:  # raised by the next flush or by close
            self._error = exc

    def _wait(self) -> None:
        if self._writer is not None:
            self._writer.join()
            self._writer = None
        if self._error is not None:
            raise self._error


@dataclass
class _Block:
    start: int  # aligned file offset of the buffer's first byte
    stop: int  # end of the span that was asked for
    buffer: memoryview
    read: Future[int]  # bytes read into the buffer

    def holds(self, size: int, offset: int) -> bool:
        return self.start <= offset and offset + size <= self.stop


class ReadAhead:
    """Serves `pread` for a `PayloadReader` from blocks read ahead with O_DIRECT.

    `schedule` names the file spans a sequential reader will want next; each is read on an I/O
    thread into a buffer of its own. A `pread` that one of them holds waits for it and returns
    a view of the buffer, valid until the next call; anything else is an ordinary pread. A
    block that failed or came short (a file truncated behind our back) is read the ordinary
    way, so errors are the ordinary ones. Where O_DIRECT is refused, `schedule` only asks the
    kernel to read the spans into the page cache (posix_fadvise).
    """

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._direct: int | None = None
        self._opened = False
        self._ahead: list[_Block] = []
        self._spare: list[memoryview] = []

    def schedule(self, spans: Sequence[tuple[int, int]]) -> None:
        """Read these [start, stop) spans ahead (empty ones, past the end, are skipped),
        dropping blocks read for any other."""
        wanted = {
            (start - start % ALIGN, stop)
            for start, stop in spans
            if 0 < stop - start <= READ_BLOCK_MAX - 2 * ALIGN
        }
        for block in [b for b in self._ahead if (b.start, b.stop) not in wanted]:
            self._drop(block)
        direct = self._direct_fd()
        for start, stop in sorted(wanted - {(b.start, b.stop) for b in self._ahead}):
            if direct is None:
                os.posix_fadvise(self._fd, start, stop - start, os.POSIX_FADV_WILLNEED)
                continue
            size = -(-(stop - start) // ALIGN) * ALIGN
            buffer = self._spare.pop() if self._spare else memoryview(mmap.mmap(-1, READ_BLOCK_MAX))
            read = _readers().submit(os.preadv, direct, [buffer[:size]], start)
            self._ahead.append(_Block(start, stop, buffer, read))

    def pread(self, size: int, offset: int) -> bytes | memoryview:
        for block in self._ahead:
            if block.holds(size, offset):
                if _completed(block.read) >= offset + size - block.start:
                    return block.buffer[offset - block.start : offset - block.start + size]
                self._give_up()  # refused, failed or short: the ordinary way from now on
                break
        return os.pread(self._fd, size, offset)

    def close(self) -> None:
        """Wait for reads still going, and let go of the buffers and the O_DIRECT descriptor."""
        for block in list(self._ahead):
            self._drop(block)
        self._spare.clear()
        if self._direct is not None:
            os.close(self._direct)
            self._direct = None

    def _give_up(self) -> None:
        self.close()
        self._opened = True  # never reopened: schedule falls back to posix_fadvise

    def _drop(self, block: _Block) -> None:
        if not block.read.cancel():
            block.read.exception()  # wait: the thread may still be writing into the buffer
        self._ahead.remove(block)
        self._spare.append(block.buffer)

    def _direct_fd(self) -> int | None:
        """Opened on first use: most files are never read sequentially in large blocks."""
        if not self._opened:
            self._opened = True
            self._direct = _open_direct(self._fd, os.O_RDONLY)
        return self._direct


def _completed(read: Future[int]) -> int:
    """How many bytes a block's read brought in (waiting for it); -1 if it failed."""
    try:
        return read.result()
    except OSError:
        return -1


_readers = LazyPool("cagefs-readahead", lambda: _READ_THREADS)  # every ReadAhead's I/O threads


def _open_direct(fd: int, access: int) -> int | None:
    """A second, O_DIRECT descriptor on the file behind `fd`; None where it is refused."""
    try:
        return os.open(f"/proc/self/fd/{fd}", access | os.O_DIRECT | os.O_CLOEXEC)
    except OSError:
        return None


def _pwrite_all(fd: int, data: memoryview, offset: int) -> None:
    while data:
        written = os.pwrite(fd, data, offset)
        data, offset = data[written:], offset + written
