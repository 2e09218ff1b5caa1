"""The change journal and hard links together: a file with records that is then linked,
unlinked by one name, or renamed keeps its last fsync'ed content under every name, as one file.

After kill -9 and a remount (which folds the records), or a clean unmount, or `cagefs compact`:
every name reads the last fsync'ed content, all names are one inode in the mount and one
backing file in the store, and Go `age -d` of each backing name gives that content.
"""

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from .helpers import SUFFIX, Daemon, cagefs, decrypt_backing, records
from .test_journal import edit, make_base, wait_for

MARKER = b"FSYNCED-BEFORE-THE-LINK-" * 8


@pytest.fixture
def journaled(request: pytest.FixtureRequest, daemons: Callable[..., Daemon]) -> Daemon:
    daemon = daemons(getattr(request, "param", "auto"), options=["--compact-idle", "600s"])
    daemon.start()
    return daemon


def with_record_then_linked(daemon: Daemon) -> bytes:
    """f.bin, published big, gets a small fsync'ed change (a record), then the names g.bin
    and d/h.bin; returns the content."""
    data = bytearray(make_base(daemon))
    (daemon.mnt / "d").mkdir()
    edit(daemon.mnt / "f.bin", 1_000_000, MARKER)
    data[1_000_000 : 1_000_000 + len(MARKER)] = MARKER
    assert records(daemon.store), "the fsync wrote no journal record"
    os.link(daemon.mnt / "f.bin", daemon.mnt / "g.bin")
    os.link(daemon.mnt / "f.bin", daemon.mnt / "d" / "h.bin")
    return bytes(data)


def assert_one_file(daemon: Daemon, names: list[str], data: bytes) -> None:
    """Through the mount and in the store: the names are one file with `data`."""
    for name in names:
        got = (daemon.mnt / name).read_bytes()
        assert got == data, f"{name}: {describe(got, data)}"
    inodes = {(daemon.mnt / name).stat().st_ino for name in names}
    assert len(inodes) == 1, f"{names} are {len(inodes)} inodes in the mount"
    assert (daemon.mnt / names[0]).stat().st_nlink == len(names)
    backing = [daemon.store / f"{name}{SUFFIX}" for name in names]
    inodes = {path.stat().st_ino for path in backing}
    assert len(inodes) == 1, f"{names} are {len(inodes)} backing files, not one"
    for path in backing:
        got = decrypt_backing(path, daemon.identity)
        assert got == data, f"age -d {path.name}: {describe(got, data)}"


def describe(got: bytes, want: bytes) -> str:
    if len(got) != len(want):
        return f"{len(got)} bytes, not {len(want)}"
    first = next(i for i, (a, b) in enumerate(zip(got, want, strict=True)) if a != b)
    return f"differs first at byte {first}"


@pytest.mark.parametrize("journaled", ["auto", "tempfile"], indirect=True)
def test_a_file_with_records_linked_then_killed(journaled: Daemon) -> None:
    data = with_record_then_linked(journaled)
    names = ["f.bin", "g.bin", "d/h.bin"]
    assert {(journaled.mnt / name).read_bytes() == data for name in names} == {True}
    assert records(journaled.store), "records gone before the crash"
    journaled.kill9()
    journaled.start()
    assert records(journaled.store) == []
    assert_one_file(journaled, names, data)


def test_a_linked_file_with_records_written_again_then_killed(journaled: Daemon) -> None:
    data = bytearray(with_record_then_linked(journaled))
    edit(journaled.mnt / "d" / "h.bin", 5, b"after the link")  # linked: a whole publish
    data[5:19] = b"after the link"
    journaled.kill9()
    journaled.start()
    assert records(journaled.store) == []
    assert_one_file(journaled, ["f.bin", "g.bin", "d/h.bin"], bytes(data))


def test_the_original_name_unlinked_keeps_the_records(journaled: Daemon) -> None:
    data = with_record_then_linked(journaled)
    os.unlink(journaled.mnt / "f.bin")
    assert records(journaled.store), "unlinking one of three names dropped the records"
    assert records(journaled.store), "records gone before the crash"
    journaled.kill9()
    journaled.start()
    assert records(journaled.store) == []
    assert not (journaled.mnt / "f.bin").exists()
    assert_one_file(journaled, ["g.bin", "d/h.bin"], data)


def test_two_names_unlinked_keep_the_records(journaled: Daemon) -> None:
    data = with_record_then_linked(journaled)
    os.unlink(journaled.mnt / "f.bin")
    os.unlink(journaled.mnt / "d" / "h.bin")
    assert records(journaled.store), "records gone before the crash"
    journaled.kill9()
    journaled.start()
    assert records(journaled.store) == []
    assert_one_file(journaled, ["g.bin"], data)


def test_a_second_name_renamed_elsewhere_then_killed(journaled: Daemon) -> None:
    data = with_record_then_linked(journaled)
    (journaled.mnt / "e").mkdir()
    os.rename(journaled.mnt / "d" / "h.bin", journaled.mnt / "e" / "x.bin")
    os.rename(journaled.mnt / "g.bin", journaled.mnt / "d" / "g2.bin")
    os.rename(journaled.mnt / "d", journaled.mnt / "d3")  # a directory holding a name
    os.rename(journaled.mnt / "f.bin", journaled.mnt / "e" / "x.bin")  # one file: both stay
    assert records(journaled.store), "records gone before the crash"
    journaled.kill9()
    journaled.start()
    assert records(journaled.store) == []
    assert not (journaled.mnt / "d").exists()
    assert_one_file(journaled, ["f.bin", "d3/g2.bin", "e/x.bin"], data)


def test_a_name_renamed_over_keeps_the_records(journaled: Daemon) -> None:
    data = with_record_then_linked(journaled)
    with open(journaled.mnt / "other", "wb") as f:  # published, so the rename is real
        f.write(b"replaces one name\n")
        f.flush()
        os.fsync(f.fileno())
    os.rename(journaled.mnt / "other", journaled.mnt / "f.bin")
    assert records(journaled.store), "records gone before the crash"
    journaled.kill9()
    journaled.start()
    assert records(journaled.store) == []
    assert (journaled.mnt / "f.bin").read_bytes() == b"replaces one name\n"
    assert_one_file(journaled, ["g.bin", "d/h.bin"], data)


def test_idle_folding_of_a_linked_file_keeps_the_link(daemons: Callable[..., Daemon]) -> None:
    daemon = daemons("auto", options=["--compact-idle", "1s"])
    daemon.start()
    data = with_record_then_linked(daemon)
    os.unlink(daemon.mnt / "f.bin")
    wait_for(lambda: not records(daemon.store))
    assert_one_file(daemon, ["g.bin", "d/h.bin"], data)
    daemon.kill9()
    daemon.start()
    assert_one_file(daemon, ["g.bin", "d/h.bin"], data)


def test_a_clean_unmount_folds_records_of_a_linked_file(journaled: Daemon) -> None:
    data = with_record_then_linked(journaled)
    journaled.stop_clean()
    assert records(journaled.store) == []
    journaled.start()
    assert_one_file(journaled, ["f.bin", "g.bin", "d/h.bin"], data)


def test_cagefs_compact_keeps_the_link(journaled: Daemon, identity: Path) -> None:
    data = with_record_then_linked(journaled)
    assert records(journaled.store), "records gone before the crash"
    journaled.kill9()
    proc = cagefs("compact", journaled.store, "-i", identity)
    assert proc.returncode == 0, proc.stderr
    assert "1 file(s) brought up to date" in proc.stderr, proc.stderr
    assert records(journaled.store) == []
    journaled.start()
    assert_one_file(journaled, ["f.bin", "g.bin", "d/h.bin"], data)
