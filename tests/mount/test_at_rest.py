"""I1: no plaintext at rest. Workloads write a unique marker through the mount; then the store
(with `.cagefs/tmp`), /tmp, /var/tmp and /dev/shm are searched for it, while files are still
open, after close, after a crash and after unmount. The test's own plaintext (the twin dir)
and the mount itself (another filesystem) are not searched.
"""

import contextlib
import os
import random
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from .helpers import Daemon, find_marker, opened, run

SYSTEM_TEMP = [Path("/tmp"), Path("/var/tmp"), Path("/dev/shm")]


STARTED: dict[bytes, float] = {}


@pytest.fixture
def marker() -> bytes:
    """A fresh marker, and the time before which no file can contain it (minus clock slack)."""
    value = f"CAGEFS-I1-MARKER-{uuid.uuid4().hex}".encode()
    STARTED[value] = time.time() - 2
    return value


@pytest.fixture
def twin(tmp_path: Path) -> Path:
    """The only place where the test keeps plaintext on disk; never searched."""
    path = tmp_path / "twin-plaintext"
    path.mkdir()
    return path


def assert_nowhere(marker: bytes, daemon: Daemon, twin: Path) -> None:
    """The whole store, and whatever changed in the system temp dirs since the test began."""
    found = find_marker([daemon.store], marker, skip=[])
    found += find_marker(SYSTEM_TEMP, marker, skip=[twin], since=STARTED[marker])
    assert not found, f"plaintext marker found at rest in {found}"


def marked(marker: bytes, size: int, seed: int = 0) -> bytes:
    """size bytes with the marker at the start, every 10 KiB, and in between random bytes."""
    rng = random.Random(seed)
    out = bytearray()
    while len(out) < size:
        out += marker + rng.randbytes(10_000)
    return bytes(out[:size])


def test_sequential_writes(mounted: Daemon, marker: bytes, twin: Path) -> None:
    (twin / "src").write_bytes(marked(marker, 3 << 20))
    run("dd", f"if={twin}/src", f"of={mounted.mnt}/dd.bin", "bs=1M", "status=none")
    run("cp", twin / "src", mounted.mnt / "cp.bin")
    with opened(mounted.mnt / "open.bin", os.O_WRONLY | os.O_CREAT) as fd:
        os.write(fd, marked(marker, 200_000))
        assert_nowhere(marker, mounted, twin)  # still open, not yet published
    assert_nowhere(marker, mounted, twin)
    mounted.stop_clean()
    assert_nowhere(marker, mounted, twin)


def random_writes(path: Path, marker: bytes, size: int, count: int, fsync_every: int) -> None:
    rng = random.Random(4)
    with opened(path, os.O_RDWR) as fd:
        for i in range(count):
            os.pwrite(fd, marker, rng.randrange(size + 1000))
            if i % fsync_every == fsync_every - 1:
                os.fsync(fd)


def test_random_writes(mounted: Daemon, marker: bytes, twin: Path) -> None:
    f = mounted.mnt / "r.bin"
    f.write_bytes(random.Random(1).randbytes(500_000))
    with opened(f, os.O_RDWR) as fd:
        rng = random.Random(2)
        for _ in range(200):
            os.pwrite(fd, marker, rng.randrange(600_000))
        assert_nowhere(marker, mounted, twin)  # staged, not published
        os.fsync(fd)
        os.pwrite(fd, marker, 10)
    random_writes(f, marker, 600_000, 100, fsync_every=7)
    assert_nowhere(marker, mounted, twin)
    mounted.stop_clean()
    assert_nowhere(marker, mounted, twin)


@pytest.mark.parametrize(
    ("strategy", "options"), [("tempfile", []), ("auto", ["--memory-threshold", "1M"])]
)
def test_large_file_staged_on_disk(
    daemons: Callable[..., Daemon], marker: bytes, twin: Path, strategy: str, options: list[str]
) -> None:
    """The tempfile strategy's scratch file must be encrypted (ephemeral key) while in use."""
    daemon = daemons(strategy, options=options)
    daemon.start()
    f = daemon.mnt / "large.bin"
    run("dd", "if=/dev/urandom", f"of={f}", "bs=1M", "count=24", "status=none")
    with opened(f, os.O_RDWR) as fd:
        rng = random.Random(3)
        for _ in range(500):
            os.pwrite(fd, marker, rng.randrange(24 << 20))
        os.pwrite(fd, marked(marker, 2 << 20), 5 << 20)
        assert_nowhere(marker, daemon, twin)  # the scratch file exists now
    assert_nowhere(marker, daemon, twin)
    daemon.stop_clean()
    assert_nowhere(marker, daemon, twin)


WRITER = r"""
import os, sys
path, marker = sys.argv[1], sys.argv[2].encode()
fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
for off in range(0, 3 << 20, 4096):
    os.pwrite(fd, marker, off)
os.write(1, b"ready\n")
sys.stdin.read()  # killed here, with the file still open
"""


def test_aborted_writes(mounted: Daemon, marker: bytes, twin: Path) -> None:
    """A writer killed mid-file, then the daemon killed with staged writes: nothing leaks."""
    (mounted.mnt / "old.bin").write_bytes(random.Random(6).randbytes(300_000))
    mounted.remount()
    for name in ("new.bin", "old.bin"):
        writer = subprocess.Popen(
            [sys.executable, "-c", WRITER, mounted.mnt / name, marker],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        assert writer.stdout is not None and writer.stdout.readline() == b"ready\n"
        writer.kill()
        writer.wait(60)
        assert_nowhere(marker, mounted, twin)
    fd = os.open(mounted.mnt / "old.bin", os.O_RDWR)
    try:
        for off in range(0, 3 << 20, 8192):
            os.pwrite(fd, marker, off)
        mounted.kill9()
    finally:
        with contextlib.suppress(OSError):  # the daemon is gone; close may say so
            os.close(fd)
    assert_nowhere(marker, mounted, twin)  # leftovers of the crash in .cagefs/tmp included
    mounted.start()
    assert_nowhere(marker, mounted, twin)
    mounted.assert_store_matches()
