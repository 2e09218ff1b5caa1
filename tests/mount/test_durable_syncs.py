"""What an fsync costs the disk, counted with `strace` on the daemon: each sync it needs, and
none it does not (a SQLite commit in rollback-journal mode makes three of these calls).

The durability itself is what the crash tests check; here, that the sync a promise needs is
made (a directory fsync after a name changed) and that one already made is not made again.
"""

import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from .helpers import META, SUFFIX, Daemon, deleted_store_files_held, syncs_of, traced


@pytest.fixture
def daemon(daemons: Callable[..., Daemon]) -> Daemon:
    """No background publish round: what it syncs and opens would count as the request's."""
    started = daemons("auto", options=["--publish-interval", "600"])
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
    (a walk from the store root, held open, one `openat` per level) and does not open the file
    itself to see whether it is large (its lookup's stat says so). At the root: nothing."""
    deep = daemon.mnt / "a/b/c"
    deep.mkdir(parents=True)
    for directory, walked in ((deep, ["a", "b", "c"]), (daemon.mnt, [])):
        with open(directory / "f", "wb") as f:
            f.write(b"small")
            os.fsync(f.fileno())  # published: on disk under its name
        os.stat(directory / "f")  # looked up: the unlink is the only request below
        with traced(daemon.pid, "openat") as calls:
            os.unlink(directory / "f")
        opened = [args.split('"')[1] for tid, _, args in calls if tid == daemon.pid]
        assert opened == walked, f"the unlink opened {opened}"


def test_an_unlinked_journal_is_freed_off_the_event_loop(daemon: Daemon) -> None:
    """A SQLite `-journal` is removed at every commit while the mount still has its version
    open: closing that last reference frees the file (1 ms on this disk), which the event loop
    must not do inside the unlink. The reclaim thread closes it; it is still given back."""
    mnt, store = daemon.mnt, daemon.store
    fd = os.open(mnt / "f.db-journal", os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        os.write(fd, b"journal header and pages" * 100)
        os.fsync(fd)  # published: the mount reads it from its backing file
        os.pwrite(fd, b"header", 0)
        os.fsync(fd)  # a journal record: the content stays open for it
    finally:
        os.close(fd)
    with traced(daemon.pid, "close") as calls:
        os.unlink(mnt / "f.db-journal")
    files = (f"{store}/{META}/tmp/", f"{store}/f.db-journal{SUFFIX}")
    on_loop = [a for tid, _, a in calls if tid == daemon.pid and any(f in a for f in files)]
    assert on_loop == [], f"the event loop closed the removed file: {on_loop}"
    deadline = time.monotonic() + 30  # (only guards a hang)
    while (held := deleted_store_files_held(daemon)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert held == [], f"the daemon still holds the removed file: {held}"


def test_fsyncdir_waits_for_the_disk_off_the_event_loop(daemon: Daemon) -> None:
    """A directory's fsync waits for the disk: made on the event loop, it would hold every
    other request of the mount until the disk answers."""
    (daemon.mnt / "d").mkdir()
    with traced(daemon.pid, "fsync") as calls:
        fsync_directory(daemon.mnt / "d")
    directory = f"<{daemon.store / 'd'}>"
    syncs = [tid for tid, _, args in calls if directory in args]
    assert syncs, f"the directory was not synced: {calls}"
    assert daemon.pid not in syncs, "the event loop fsynced the directory"
