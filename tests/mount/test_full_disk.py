"""A full disk: the write that does not fit fails with ENOSPC, and nothing is lost.

The store lives on a small tmpfs of its own. Replacing a file with more than fits must fail
(at write, flush or fsync) and leave the file's previous version in place; the daemon keeps
serving, and once space is freed, writing works again.
"""

import contextlib
import errno
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from .helpers import STRATEGIES, Daemon, cagefs, deleted_store_files_held, opened

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
    wait_for(lambda: kept.read_bytes() == OLD)  # the release gives the change up
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


def wait_for(ready: Callable[[], bool]) -> None:
    """close(2) returns before the daemon gets the (asynchronous) release that saves the
    file, or gives its change up: until then the change is still the file's content."""
    deadline = time.monotonic() + 10
    while not ready() and time.monotonic() < deadline:
        time.sleep(0.05)


def fill(disk: Path, leave: int) -> Path:
    """Fill `disk` until only about `leave` bytes are free; returns the filler file."""
    filler = disk / "filler"
    with open(filler, "wb") as f, contextlib.suppress(OSError):
        while True:
            f.write(bytes(1 << 16))
            f.flush()
    size = filler.stat().st_size
    os.truncate(filler, max(0, size - leave))
    return filler


@pytest.mark.parametrize("size", [40_000, 1_500_000])
def test_cp_to_a_full_disk_fails_and_keeps_the_old_version(
    mounted: Daemon, tmp_path: Path, size: int
) -> None:
    """The seal at the last release comes after close(2) returned: the room it needs is
    reserved at close, so `cp` exits non-zero, and the previous version stays."""
    mnt = mounted.mnt
    kept = mnt / "kept.bin"
    kept.write_bytes(OLD)
    with opened(kept, os.O_RDONLY) as fd:
        os.fsync(fd)
    source = tmp_path / "source"
    source.write_bytes(os.urandom(size))
    filler = fill(mounted.store.parent, leave=size - 24 * 1024)
    try:
        for target in (kept, mnt / "new.bin"):
            cp = subprocess.run(["cp", source, target], capture_output=True, check=False)
            assert cp.returncode != 0, f"cp {size} bytes to a full disk exited 0 ({target.name})"
            assert b"No space left" in cp.stderr, cp.stderr
        wait_for(lambda: kept.read_bytes() == OLD)
        assert kept.read_bytes() == OLD, "a failed cp over a file lost its previous version"
    finally:
        filler.unlink()
    (mnt / "new.bin").unlink(missing_ok=True)
    mounted.remount()
    assert kept.read_bytes() == OLD
    mounted.assert_store_matches()


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_after_a_failed_save_the_mount_shows_what_the_store_has(
    daemons: Callable[..., Daemon], strategy: str
) -> None:
    """Pages the kernel cached of the unsaved change (and its mtime) are dropped with it.
    Publishing is held back, so the file keeps its open content (a version waiting to be
    published) after the failure: nothing else makes the kernel look again."""
    daemon = daemons(strategy, options=["--publish-interval", "600"])
    daemon.start()
    kept = daemon.mnt / "kept.bin"
    kept.write_bytes(OLD)
    saved = b"saved" + OLD[5:]
    with opened(kept, os.O_WRONLY) as fd:
        os.pwrite(fd, b"saved", 0)  # closed: waits for its publish
    wait_for(lambda: len(os.listdir(daemon.store / ".cagefs" / "tmp")) == 1)  # released
    wait_for(lambda: not deleted_store_files_held(daemon))  # the version it replaced: freed
    filler = fill(daemon.store.parent, leave=160 * 1024)  # staging fits, a version not
    try:
        fd = os.open(kept, os.O_RDWR)
        try:
            os.pwrite(fd, b"unsaved" * 1000, 0)
            os.fstat(fd)  # the kernel takes in the new mtime, then caches the new pages:
            assert os.pread(fd, 7, 0) == b"unsaved"
            with pytest.raises(OSError) as failed:
                os.fsync(fd)
            assert failed.value.errno == errno.ENOSPC, failed.value
        finally:
            with contextlib.suppress(OSError):
                os.close(fd)
        wait_for(lambda: kept.read_bytes() == saved)
        got = kept.read_bytes()
        assert len(got) == len(saved), f"size {len(got)} after the failed save, {len(OLD)} kept"
        assert got[:7] == saved[:7], f"the mount shows a change never saved: {got[:7]!r}"
        assert got == saved
    finally:
        filler.unlink()
    daemon.assert_store_matches()


def test_growing_past_the_free_space_is_refused_at_once(mounted: Daemon) -> None:
    with opened(mounted.mnt / "f", os.O_RDWR | os.O_CREAT) as fd:
        os.write(fd, b"data")
        with pytest.raises(OSError) as failed:
            os.ftruncate(fd, 4 * DISK)
        assert failed.value.errno == errno.ENOSPC
        assert os.fstat(fd).st_size == 4
    assert (mounted.mnt / "f").read_bytes() == b"data"
    mounted.assert_store_matches()


def test_scratch_on_a_full_disk_reports_enospc(daemons: Callable[..., Daemon]) -> None:
    """Random writes staged in the encrypted scratch file (tempfile): a block that does not
    fit, even in part (a short write), fails with ENOSPC, never later with EIO."""
    daemon = daemons("tempfile")
    daemon.start()
    errors = set()
    filler = fill(daemon.store.parent, leave=300 * 1024)
    try:
        with opened(daemon.mnt / "f", os.O_RDWR | os.O_CREAT) as fd:
            for i in range(40):
                try:
                    os.pwrite(fd, os.urandom(70_000), (i * 7919 % 40) * 100_000)
                except OSError as exc:
                    errors.add(exc.errno)
            try:
                os.pread(fd, 4 << 20, 0)
                os.fsync(fd)
            except OSError as exc:
                errors.add(exc.errno)
    except OSError as exc:
        errors.add(exc.errno)
    finally:
        filler.unlink()
    assert errors == {errno.ENOSPC}, [errno.errorcode[e] for e in errors]
    (daemon.mnt / "f").unlink(missing_ok=True)
    daemon.assert_store_matches()


@pytest.mark.parametrize("strategy", ["memory", "auto"])
def test_a_file_with_no_name_left_is_never_sealed(
    daemons: Callable[..., Daemon], strategy: str
) -> None:
    """Unlinked while open: neither its close nor the unmount writes a version of it (one
    nobody could open, which filled the disk a second time for a huge file)."""
    daemon = daemons(strategy)
    daemon.start()
    filler = fill(daemon.store.parent, leave=1 << 20)
    try:
        with opened(daemon.mnt / "gone", os.O_RDWR | os.O_CREAT) as fd:
            os.pwrite(fd, bytes(4096), 4096)  # staged in RAM, not streamed
            os.pwrite(fd, os.urandom(2 << 20), 8192)  # more than the disk has
            (daemon.mnt / "gone").unlink()
            os.pwrite(fd, b"more", 0)
        fd = os.open(daemon.mnt / "open", os.O_RDWR | os.O_CREAT)
        try:
            os.pwrite(fd, bytes(4096), 4096)
            os.pwrite(fd, os.urandom(2 << 20), 8192)
            (daemon.mnt / "open").unlink()
            daemon.stop_clean()  # unmount with it still open
        finally:
            with contextlib.suppress(OSError):  # ENOTCONN once unmounted
                os.close(fd)
    finally:
        filler.unlink()
    log = daemon.log_text()
    assert "No space left" not in log and "could not be saved" not in log, log[-2000:]


def test_close_of_a_writer_hears_of_a_full_disk_while_others_have_the_file_open(
    mounted: Daemon,
) -> None:
    """Before, only the close of the last handle sealed staged changes: a writer that closed
    while a reader still had the file open was told nothing, and the reader's close lost it."""
    kept = mounted.mnt / "kept.bin"
    kept.write_bytes(OLD)
    with opened(kept, os.O_RDONLY) as reader:
        filler = fill(mounted.store.parent, leave=160 * 1024)  # staging fits, a version not
        try:
            writer = os.open(kept, os.O_RDWR)
            os.pwrite(writer, b"edit", 0)
            with pytest.raises(OSError) as failed:
                os.close(writer)
            assert failed.value.errno == errno.ENOSPC
        finally:
            filler.unlink()
        assert os.pread(reader, 4, 0) in (b"edit", OLD[:4])
    mounted.assert_store_matches()
