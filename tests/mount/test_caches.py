"""The daemon's caches never serve stale data: file keys (store/filekeys.py) and the kernel's
entry cache (negative entries, fs/operations.py) after publish, rename, unlink and rewrite."""

import os
import time
from collections.abc import Callable

from .helpers import Daemon

PUBLISHED = 1.5  # seconds: one publish interval and some, so released files are on disk


def test_reopened_files_show_their_latest_version(daemons: Callable[..., Daemon]) -> None:
    """Every open after the last handle closed reads the backing file again (its key may come
    from the cache): rewritten, renamed over, replaced after unlink, each shows its newest."""
    daemon = daemons("auto")
    daemon.start()
    a, b = daemon.mnt / "a.txt", daemon.mnt / "b.txt"
    for n in range(3):
        a.write_bytes(b"a version %d" % n)
        time.sleep(PUBLISHED)
        assert a.read_bytes() == b"a version %d" % n
    b.write_bytes(b"b, renamed over a")
    os.rename(b, a)
    time.sleep(PUBLISHED)
    assert a.read_bytes() == b"b, renamed over a"
    a.unlink()
    a.write_bytes(b"a again")
    time.sleep(PUBLISHED)
    assert a.read_bytes() == b"a again"
    daemon.assert_store_matches(remount=True)


def lookups_of(daemon: Daemon, name: str, since: int) -> int:
    """Lookup requests for `name` in the daemon's --debug log after offset `since`."""
    with open(daemon.log, "rb") as log:
        log.seek(since)
        return log.read().count(b"lookup(1, %r," % name.encode())


def test_a_missing_name_is_looked_up_once_and_created_at_once(
    daemons: Callable[..., Daemon],
) -> None:
    """A lookup of a missing name is a negative entry the kernel keeps (as SQLite checks for
    its `-journal` and `-wal` at every transaction, then creates the `-journal`): the next
    checks and the create ask nothing. The entry follows every change made through the
    mount: the name created, removed, renamed to and from shows at once."""
    daemon = daemons("auto", options=["--debug"])
    daemon.start()
    mnt, name = daemon.mnt, "db-journal"
    since = daemon.log.stat().st_size
    for _ in range(5):  # back to back: the entry timeout (1 s) would have to pass each time
        assert not (mnt / name).exists()
    with open(mnt / name, "xb") as f:
        f.write(b"journal")
    asked = lookups_of(daemon, name, since)
    assert asked < 5, f"{asked} lookups of a missing name checked 5 times, then created"
    assert (mnt / name).read_bytes() == b"journal"
    (mnt / name).unlink()
    assert not (mnt / name).exists()
    (mnt / "other").write_bytes(b"renamed")
    os.rename(mnt / "other", mnt / name)
    assert (mnt / name).read_bytes() == b"renamed" and not (mnt / "other").exists()
    (mnt / "d").mkdir()
    os.rename(mnt / name, mnt / "d" / name)
    assert not (mnt / name).exists() and (mnt / "d" / name).read_bytes() == b"renamed"
    os.link(mnt / "d" / name, mnt / name)
    assert (mnt / name).read_bytes() == b"renamed"
    daemon.assert_store_matches(remount=True)
