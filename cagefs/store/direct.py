"""Appending ciphertext with O_DIRECT: a sealer's output skips the page cache.

A new version is written once and read back, if at all, through the daemon's chunk cache, so
caching its ciphertext in the kernel only costs: a copy into the page cache, then writeback.
With O_DIRECT the disk reads the data straight from the appender's buffers.

O_DIRECT needs offsets, lengths and memory aligned to the device's block size; `ALIGN` (4096)
suits 512-byte and 4 KiB devices alike. Each of the appender's two page-aligned buffers stands
for an aligned stretch of the file; when one holds `FLUSH` bytes, a writer thread writes its
aligned part direct while sealing goes on into the other. A payload continues at an arbitrary
offset (after the header and the daemon's first MiB), so the first buffer starts with a few
bytes that are already in the file: they are skipped, and the rest of their block, like the
tail left at the end, goes through the ordinary descriptor. The appender lends its buffers to
the `PayloadWriter` (a `LendingSink`), which seals straight into them: no copy of the output.
Where O_DIRECT is refused (a filesystem without it), every byte takes the ordinary path:
slower, never wrong.
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
        self._direct = _open_direct(fd)
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
