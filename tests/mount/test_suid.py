"""setuid/setgid are cleared as Linux filesystems clear them: on a write or truncate by an
unprivileged user (S_ISUID always, S_ISGID when group execute is set) and on chown. On a
shared mount (allow_other) anything else lets a user plant code that runs as the owner."""

import os
import stat
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from .helpers import Daemon
from .test_options import NOBODY, shared_mountpoint  # noqa: F401 (a fixture)

# (mode before, what the user does, mode after)
CASES = [
    (0o6777, ["sh", "-c", 'echo x >> "$0"'], 0o0777),
    (0o6767, ["sh", "-c", 'echo x >> "$0"'], 0o2767),  # no group execute: setgid stays
    (0o6777, ["truncate", "-s", "3"], 0o0777),
    (0o6777, ["sh", "-c", 'echo x > "$0"'], 0o0777),
]


def mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize("strategy", ["stream", "memory"])
def test_unprivileged_writes_clear_setuid(
    daemons: Callable[..., Daemon], shared_mountpoint: Path, strategy: str  # noqa: F811
) -> None:
    daemon = daemons(strategy, mnt=shared_mountpoint, options=["-o", "allow_other"])
    daemon.start()
    try:
        wrong = []
        for i, (before, command, after) in enumerate(CASES):
            f = daemon.mnt / f"f{i}"
            f.write_bytes(b"#!/bin/sh\n")
            f.chmod(before)
            done = subprocess.run([*NOBODY, *command, f], capture_output=True, check=False)
            assert done.returncode == 0, done.stderr
            if mode(f) != after:
                wrong.append((command[-1], oct(before), oct(mode(f)), oct(after)))
        g = daemon.mnt / "g"
        g.write_bytes(b"#!/bin/sh\n")
        g.chmod(0o6755)
        os.chown(g, 65534, 65534)
        if mode(g) != 0o0755:
            wrong.append(("chown", "0o6755", oct(mode(g)), "0o755"))
        assert not wrong, f"(what, before, got, want): {wrong}"
        daemon.remount()
        assert mode(daemon.mnt / "f0") == 0o777, "the cleared mode is what the store keeps"
    finally:
        if daemon.proc is not None:
            daemon.stop_clean()  # before the shared mount point goes
