"""What an fsync costs the disk, counted with `strace` on the daemon: each sync it needs, and
none it does not (a SQLite commit in rollback-journal mode makes three of these calls).

The durability itself is what the crash tests check; here, that the sync a promise needs is
made (a directory fsync after a name changed) and that one already made is not made again.
"""

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from .helpers import META, Daemon, syncs_of, traced


@pytest.fixture
def daemon(daemons: Callable[..., Daemon]) -> Daemon:
    started = daemons("auto")
    started.start()
    return started


def dir_syncs(calls: list[tuple[str, str]], directory: Path) -> list[tuple[str, str]]:
    return [(call, path) for call, path in calls if path == str(directory)]


def file_syncs(calls: list[tuple[str, str]], store: Path, name: str) -> list[tuple[str, str]]:
    """Syncs of a file's new version: its temp in .cagefs/tmp, or its backing file."""
    temps = f"{store}/{META}/tmp/"
    return [
        (call, path)
        for call, path in calls
        if path == f"{store}/{name}.age" or (path.startswith(temps) and "/v-" in path)
    ]


def create_chown_write_fsync(mnt: Path, name: str) -> None:
    """A SQLite `-journal` as root makes it: created, given the database's owner, written,
    fsync'ed."""
    fd = os.open(mnt / name, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        os.fchown(fd, os.getuid(), os.getgid())
        os.write(fd, b"journal header and pages" * 100)
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_directory(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def test_an_fsync_after_a_chown_syncs_the_new_file_once(daemon: Daemon) -> None:
    """The attributes are on the version the fsync publishes: its one fsync makes them
    durable (an fsync of the backing file after the rename was a second, whole sync)."""
    with syncs_of(daemon.pid) as calls:
        create_chown_write_fsync(daemon.mnt, "f.db-journal")
    syncs = file_syncs(calls, daemon.store, "f.db-journal")
    assert len(syncs) == 1, f"the new file was synced {len(syncs)} times: {syncs}"
    assert dir_syncs(calls, daemon.store) == [("fsync", str(daemon.store))], calls
    fd = os.open(daemon.mnt / "f.db-journal", os.O_RDONLY)
    try:  # an attribute changed afterwards is synced by the next fsync
        os.fchmod(fd, 0o600)
        with syncs_of(daemon.pid) as calls:
            os.fsync(fd)
    finally:
        os.close(fd)
    assert len(file_syncs(calls, daemon.store, "f.db-journal")) == 1, calls
    assert os.stat(daemon.store / "f.db-journal.age").st_mode & 0o777 == 0o600


def test_fsyncdir_after_the_publish_syncs_nothing_after_a_change_syncs(daemon: Daemon) -> None:
    """SQLite fsyncs the directory after the `-journal`'s first fsync, whose publish has just
    synced it: nothing left to do. After any name changes, an fsyncdir syncs again."""
    mnt, store = daemon.mnt, daemon.store
    (mnt / "d").mkdir()
    create_chown_write_fsync(mnt / "d", "f.db-journal")
    with syncs_of(daemon.pid) as calls:
        fsync_directory(mnt / "d")
    assert dir_syncs(calls, store / "d") == [], calls

    changes: list[tuple[str, Callable[[], object]]] = [
        ("rename", lambda: os.rename(mnt / "d/f.db-journal", mnt / "d/g")),
        ("unlink", lambda: os.unlink(mnt / "d/g")),
        ("mkdir", lambda: (mnt / "d/sub").mkdir()),
        ("rmdir", lambda: (mnt / "d/sub").rmdir()),
        ("symlink", lambda: os.symlink("target", mnt / "d/link")),
        ("chmod", lambda: os.chmod(mnt / "d", 0o750)),
    ]
    for what, change in changes:
        change()
        with syncs_of(daemon.pid) as calls:
            fsync_directory(mnt / "d")
            fsync_directory(mnt / "d")  # the second one has nothing to do
        assert dir_syncs(calls, store / "d") == [("fsync", str(store / "d"))], (what, calls)


def test_an_unlink_walks_the_store_once(daemon: Daemon) -> None:
    """`rm -rf` of a tree is one unlink per file: the request opens the file's directory once
    (a walk from the store root, one `openat` per level) and does not open the file itself to
    see whether it is large (its lookup's stat says so)."""
    deep = daemon.mnt / "a/b/c"
    deep.mkdir(parents=True)
    with open(deep / "f", "wb") as f:
        f.write(b"small")
        os.fsync(f.fileno())  # published: on disk under its name
    os.stat(deep / "f")  # looked up: the unlink is the only request below
    with traced(daemon.pid, "openat") as calls:
        os.unlink(deep / "f")
    opened = [args.split('"')[1] for tid, _, args in calls if tid == daemon.pid]
    assert opened == [".", "a", "b", "c"], f"the unlink opened {opened}"
