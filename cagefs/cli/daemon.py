"""Run the filesystem in the background, but return only once the mount is usable.

The parent forks and waits on a pipe; the child detaches (new session, stdio on /dev/null),
runs the filesystem and writes one line: `READY`, or `ERROR <exit code> <message>` if it failed
first. So `cagefs mount` exits 0 exactly when the mount works, or with the child's exit code
and one-line reason.
"""

import logging
import logging.handlers
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

from cagefs.errors import CageError

log = logging.getLogger(__name__)
SYSLOG_SOCKET = "/dev/log"
Work = Callable[[Callable[[], None]], None]


def setup_logging(
    log_file: str | None, foreground: bool, debug: bool, fallback: Path
) -> Path | None:
    """Log to the file if given, else stderr in front (with journald priorities when stderr is
    the journal), else syslog, else the `fallback` file: no line is ever dropped. Returns the
    fallback file when it is used, so that the user can be told where the log went.

    Done before forking, so that a log file that cannot be opened is reported directly.
    """
    handler: logging.Handler
    used_fallback = None
    if log_file:
        handler = logging.FileHandler(log_file)
    elif foreground and _stderr_is_journal():
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JournalFormatter())
    elif foreground:
        handler = logging.StreamHandler(sys.stderr)
    else:
        handler = _syslog() or _private_file(fallback)
        used_fallback = None if isinstance(handler, logging.handlers.SysLogHandler) else fallback
    if handler.formatter is None:
        fmt = "cagefs[%(process)d]: %(levelname)s %(message)s"
        if not isinstance(handler, logging.handlers.SysLogHandler):
            fmt = "%(asctime)s " + fmt
        handler.setFormatter(logging.Formatter(fmt))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if debug else logging.INFO)
    return used_fallback


class JournalFormatter(logging.Formatter):
    """sd-daemon(3) style: every line starts with `<N>`, its syslog priority, which journald
    strips and records (the journal adds time, pid and name itself)."""

    PRIORITIES = ((logging.CRITICAL, 2), (logging.ERROR, 3), (logging.WARNING, 4))

    def format(self, record: logging.LogRecord) -> str:
        prefix = f"<{self.priority(record.levelno)}>"
        return "\n".join(prefix + line for line in super().format(record).splitlines())

    def priority(self, level: int) -> int:
        for at_least, priority in self.PRIORITIES:
            if level >= at_least:
                return priority
        return 6 if level >= logging.INFO else 7


def _stderr_is_journal() -> bool:
    """systemd sets $JOURNAL_STREAM to the device:inode of the stream it connected."""
    try:
        st = os.fstat(sys.stderr.fileno())
    except (OSError, ValueError):
        return False
    return os.environ.get("JOURNAL_STREAM") == f"{st.st_dev}:{st.st_ino}"


def _syslog() -> logging.Handler | None:
    if not os.path.exists(SYSLOG_SOCKET):
        return None
    try:
        return logging.handlers.SysLogHandler(SYSLOG_SOCKET)
    except OSError:
        return None


class FallbackLog(logging.FileHandler):
    """The log file of a daemon with nowhere else to log. A daemon that ends cleanly having
    logged nothing worse than INFO removes it, so that only logs worth reading pile up."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600))
        super().__init__(path)
        self.path = path
        self.worst = logging.NOTSET

    def emit(self, record: logging.LogRecord) -> None:
        self.worst = max(self.worst, record.levelno)
        super().emit(record)

    def discard_if_quiet(self) -> None:
        if self.worst < logging.WARNING:
            self.close()
            self.path.unlink(missing_ok=True)


def _private_file(path: Path) -> logging.Handler:
    return FallbackLog(path)


def run_in_background(work: Work) -> int:
    """Fork; the child runs `work(report_ready)`; return 0 once it is ready, else raise."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_end)
        _child(work, write_end)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        line = pipe.readline().decode(errors="replace").strip()
    if line == "READY":
        return 0
    if line.startswith("ERROR "):
        _, code, message = line.split(" ", 2)
        raise _ChildError(message, int(code))
    _, status = os.waitpid(pid, 0)
    raise CageError(
        f"the filesystem process ended before the mount was ready (status {status}; see the log)"
    )


class _ChildError(CageError):
    """The daemon's one-line reason, with the exit code it would have ended with."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.exit_code = code


class _Reporter:
    """Tell the waiting parent, once, whether the mount came up."""

    def __init__(self, fd: int) -> None:
        self._fd: int | None = fd

    def ready(self) -> None:
        self._send("READY")

    def fail(self, message: str, code: int) -> None:
        self._send(f"ERROR {code} {message}")

    def _send(self, line: str) -> None:
        if self._fd is None:
            return
        os.write(self._fd, line.replace("\n", " ").encode() + b"\n")
        os.close(self._fd)
        self._fd = None


def _child(work: Work, pipe_fd: int) -> NoReturn:
    reporter = _Reporter(pipe_fd)
    code = 1
    try:
        os.setsid()
        _stdio_to_devnull()
        work(reporter.ready)
        code = 0
        for handler in logging.getLogger().handlers:
            if isinstance(handler, FallbackLog):
                handler.discard_if_quiet()
    except BaseException as exc:
        # Imported here: main imports this module (through mount) to build its parser.
        from cagefs.cli.main import describe, exit_code

        if isinstance(exc, CageError):
            log.error("%s", describe(exc))
        else:
            log.exception("the filesystem stopped on an unexpected error")
        reporter.fail(describe(exc), exit_code(exc))
    finally:
        logging.shutdown()
        os._exit(code)


def _stdio_to_devnull() -> None:
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.close(null)
