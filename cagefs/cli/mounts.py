"""What is mounted where, and which cagefs process serves a mount point.

`cagefs umount` must wait until the daemon has published its pending writes and exited, not
only until the kernel dropped the mount; the daemon leaves its pid in a runtime file named
after the mount point so that umount can find and wait for it.
"""

import contextlib
import hashlib
import os
import select
from pathlib import Path

_MAX_SYMLINKS = 40


def is_mount_point(path: str) -> bool:
    """True also for a dead or hung FUSE mount, which `os.path.ismount` cannot stat."""
    real = mount_path(path)
    with open("/proc/self/mountinfo") as f:
        return any(_unescape(line.split()[4]) == real for line in f)


def mount_path(path: str) -> str:
    """The absolute path mountinfo shows for `path`, found without stat'ing `path` itself: that
    asks the daemon of a mount there, which may be stopped or busy (umount must not hang on
    it). Parents are resolved with realpath; the last component only with readlink, which the
    kernel answers for a directory without asking anyone."""
    absolute = os.path.abspath(path)
    for _ in range(_MAX_SYMLINKS):
        parent, name = os.path.split(absolute)
        if not name:
            return absolute
        resolved = os.path.join(os.path.realpath(parent), name)
        try:
            target = os.readlink(resolved)
        except OSError:
            return resolved
        absolute = os.path.normpath(os.path.join(os.path.realpath(parent), target))
    return absolute


def _unescape(field: str) -> str:
    """mountinfo writes space, tab, newline and backslash as octal escapes."""
    for code in ("040", "011", "012", "134"):
        field = field.replace(f"\\{code}", chr(int(code, 8)))
    return field


def _runtime_dir() -> Path:
    if os.getuid() == 0:
        return Path("/run/cagefs")
    base = os.environ.get("XDG_RUNTIME_DIR") or f"/tmp/cagefs-{os.getuid()}"
    return Path(base) / "cagefs"


def _runtime_file(mountpoint: str, suffix: str) -> Path:
    digest = hashlib.sha256(mount_path(mountpoint).encode()).hexdigest()[:32]
    return _runtime_dir() / f"{digest}{suffix}"


def _pid_file(mountpoint: str) -> Path:
    return _runtime_file(mountpoint, ".pid")


def status_socket(mountpoint: str) -> Path:
    """Where the daemon serving `mountpoint` answers `cagefs status`."""
    return _runtime_file(mountpoint, ".sock")


def cagefs_mounts() -> list[str]:
    """Every mount point of type fuse.cagefs, as mountinfo shows them."""
    found = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            if fields[fields.index("-") + 1] == "fuse.cagefs":
                found.append(_unescape(fields[4]))
    return found


def fallback_log_file(mountpoint: str) -> Path:
    """Where a background daemon logs when there is neither --log nor syslog."""
    return _runtime_file(mountpoint, ".log")


def record_daemon(mountpoint: str) -> None:
    path = _pid_file(mountpoint)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.write_text(f"{os.getpid()}\n")


def forget_daemon(mountpoint: str) -> None:
    path = _pid_file(mountpoint)
    with contextlib.suppress(FileNotFoundError, ValueError):
        if int(path.read_text()) == os.getpid():
            path.unlink()


def daemon_pidfd(mountpoint: str) -> int | None:
    """A pidfd for the cagefs process serving `mountpoint`, or None if there is none."""
    try:
        pid = int(_pid_file(mountpoint).read_text())
        pidfd = os.pidfd_open(pid)
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            is_cagefs = b"cagefs" in f.read()
    except (FileNotFoundError, ProcessLookupError, ValueError):
        return None
    if not is_cagefs:  # the pid was reused by something else
        os.close(pidfd)
        return None
    return pidfd


def wait_for_exit(pidfd: int, timeout: float | None) -> bool:
    """Wait until the process behind `pidfd` has exited, at most `timeout` seconds (None: no
    limit); whether it has."""
    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    return bool(poller.poll(None if timeout is None else int(timeout * 1000)))
