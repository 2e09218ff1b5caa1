"""Appending ciphertext with O_DIRECT: a sealer's output skips the page cache.

A new version is written once and read back, if at all, through the daemon's chunk cache, so
caching its ciphertext in the kernel only costs: a copy into the page cache, then writeback.
With O_DIRECT the disk reads the data straight from the appender's buffers.

O_DIRECT needs offsets, lengths and memory aligned to the device's block size; `ALIGN` (4096)
suits 512-byte and 4 KiB devices alike. A payload continues at an arbitrary offset (after the
header and the daemon's first MiB), so the bytes up to the next aligned offset, and the tail
left at the end, go through the ordinary descriptor; everything between goes direct, from
page-aligned buffers, `FLUSH` bytes at a time, on a writer thread so that sealing goes on while
the disk works. Where O_DIRECT is refused (a filesystem without it), every byte takes the
ordinary path: slower, never wrong.
"""

import errno
import mmap
import os
import threading

ALIGN = 4096
FLUSH = 4 * 1024 * 1024
CAPACITY = FLUSH + 4 * 1024 * 1024  # larger writes are simply taken in several goes


def new_buffers() -> list[memoryview]:
    """The two page-aligned buffers an appender fills in turn; reusable job after job."""
    return [memoryview(mmap.mmap(-1, CAPACITY)) for _ in range(2)]


class DirectAppender:
    """A sink for `PayloadWriter` that appends to `fd` from `start`; `close` writes the rest."""

    def __init__(self, fd: int, start: int, buffers: list[memoryview]) -> None:
        self._fd = fd
        self._offset = start  # file offset of the first byte not yet written or buffered
        self._fill = 0
        self._direct = _open_direct(fd)
        self._refused = False  # O_DIRECT writes failed with EINVAL: write the ordinary way
        self._buffers = buffers
        self._current = 0
        self._writer: threading.Thread | None = None
        self._error: BaseException | None = None

    def __call__(self, data: bytes | memoryview) -> None:
        view = memoryview(data).cast("B")
        if self._direct is None:
            _pwrite_all(self._fd, view, self._offset)
            self._offset += len(view)
            return
        head = min(len(view), -self._offset % ALIGN)  # non-zero only before the first flush
        if head:  # up to the first aligned offset: the ordinary way
            _pwrite_all(self._fd, view[:head], self._offset)
            self._offset += head
            view = view[head:]
        while view:
            buffer = self._buffers[self._current]
            take = min(len(view), CAPACITY - self._fill)
            buffer[self._fill : self._fill + take] = view[:take]
            self._fill += take
            view = view[take:]
            if self._fill >= FLUSH:
                self._flush()

    def close(self) -> None:
        """Write everything still buffered; raise the first error the writer thread met."""
        try:
            if self._direct is not None:
                self._wait()
                rest = self._buffers[self._current][: self._fill]
                _pwrite_all(self._fd, rest, self._offset)
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
        rest = self._fill - size
        self._current = 1 - self._current
        self._buffers[self._current][:rest] = buffer[size : self._fill]
        self._writer = threading.Thread(
            target=self._write_direct, args=(buffer[:size], self._offset), daemon=True
        )
        self._writer.start()
        self._offset += size
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


def _open_direct(fd: int) -> int | None:
    """A second, O_DIRECT descriptor on the file behind `fd`; None where it is refused."""
    try:
        return os.open(f"/proc/self/fd/{fd}", os.O_WRONLY | os.O_DIRECT | os.O_CLOEXEC)
    except OSError:
        return None


def _pwrite_all(fd: int, data: memoryview, offset: int) -> None:
    while data:
        written = os.pwrite(fd, data, offset)
        data, offset = data[written:], offset + written
