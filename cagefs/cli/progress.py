"""Progress of a verb that goes through a whole store: files, bytes, rate and time left.

On a terminal, one line rewritten in place a few times a second; when stderr is a pipe or a
file (a log, a systemd unit), a plain line now and then, so that a log is readable.
"""

import sys
import time
from typing import TextIO

_TTY_EVERY = 0.25  # seconds between redraws on a terminal
_PIPE_EVERY = 10.0  # seconds between lines in a log


class Progress:
    def __init__(self, verb: str, files: int, size: int, out: TextIO = sys.stderr) -> None:
        self.verb = verb
        self.files, self.size = files, size
        self.done_files = self.done_bytes = 0
        self._out = out
        self._tty = out.isatty()
        self._start = self._shown = time.monotonic()
        self._drawn = False

    def __call__(self, relative: str, size: int) -> None:
        """One more file done, of `size` bytes."""
        self.done_files += 1
        self.done_bytes += size
        now = time.monotonic()
        if now - self._shown >= (_TTY_EVERY if self._tty else _PIPE_EVERY):
            self._shown = now
            self._show(self.line(now))

    def note(self, text: str, out: TextIO | None = None) -> None:
        """A line of its own (a problem, on stdout by default), without tearing the progress
        line."""
        self._clear()
        print(text, file=out or sys.stdout, flush=True)

    def close(self) -> None:
        self._clear()

    def line(self, now: float) -> str:
        elapsed = max(now - self._start, 1e-6)
        rate = self.done_bytes / elapsed
        left = self.size - self.done_bytes
        eta = f", {_duration(left / rate)} left" if rate > 0 and left > 0 else ""
        return (
            f"cagefs {self.verb}: {self.done_files}/{self.files} files, "
            f"{_size(self.done_bytes)}/{_size(self.size)}, {rate / 1e6:.0f} MB/s{eta}"
        )

    def _show(self, text: str) -> None:
        if self._tty:
            self._out.write(f"\r\x1b[K{text}")
            self._drawn = True
        else:
            self._out.write(text + "\n")
        self._out.flush()

    def _clear(self) -> None:
        if self._drawn:
            self._out.write("\r\x1b[K")
            self._out.flush()
            self._drawn = False


def _size(count: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024 or unit == "GiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024  # type: ignore[assignment]
    return f"{count} B"


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02}:{seconds % 60:02}"
