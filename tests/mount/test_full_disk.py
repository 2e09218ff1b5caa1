"""A full disk: the write that does not fit fails with ENOSPC, and nothing is lost.

The store lives on a small tmpfs of its own. Replacing a file with more than fits must fail
(at write, flush or fsync) and leave the file's previous version in place; the daemon keeps
serving, and once space is freed, writing works again.
"""

import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from .helpers import Daemon, cagefs, opened

DISK = 6 * 1024 * 1024
OLD = os.urandom(300_000)


@pytest.fixture
def store(tmp_path: Path, identity: Path) -> Iterator[Path]:
    """This module's stores live on a tmpfs of DISK bytes (the `mounted` fixture uses it)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={DISK}", "cagefs-full", disk], check=True)
    try:
        store = disk / "store"
        proc = cagefs("init", store, "--identity", identity)
        assert proc.returncode == 0, proc.stderr
        yield store
    finally:
        subprocess.run(["umount", "-l", disk], check=True)


def write_too_much(path: Path, flags: int) -> OSError:
    """Write 12 MiB (twice the disk) in 1 MiB pieces, then fsync and close; the error."""
    try:
        with opened(path, flags) as fd:
            for _ in range(12):
                os.write(fd, os.urandom(1 << 20))
            os.fsync(fd)
    except OSError as exc:
        return exc
    raise AssertionError(f"writing 12 MiB to a {DISK >> 20} MiB disk did not fail")


def test_a_full_disk_fails_the_write_and_keeps_the_old_version(mounted: Daemon) -> None:
    mnt = mounted.mnt
    kept = mnt / "kept.bin"
    kept.write_bytes(OLD)
    with opened(kept, os.O_RDONLY) as fd:
        os.fsync(fd)  # published: the version that must survive

    exc = write_too_much(kept, os.O_WRONLY | os.O_TRUNC)
    assert exc.errno == errno.ENOSPC, exc
    assert kept.read_bytes() == OLD, "a failed replacement lost the previous version"
    assert "kept.bin: No space left on device" in mounted.log_text(), "the log names the file"

    exc = write_too_much(mnt / "new.bin", os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    assert exc.errno == errno.ENOSPC, exc
    (mnt / "new.bin").unlink(missing_ok=True)

    (mnt / "after.txt").write_bytes(b"space again\n")
    assert (mnt / "after.txt").read_bytes() == b"space again\n"
    mounted.stop_clean()
    assert not list((mounted.store / ".cagefs" / "tmp").iterdir()), "temp versions left behind"
    mounted.start()
    assert kept.read_bytes() == OLD
    assert sorted(p.name for p in mnt.iterdir()) == ["after.txt", "kept.bin"]
    assert "None:" not in mounted.log_text(), "the log names a lost file by its path or as unlinked"
    mounted.assert_store_matches()
