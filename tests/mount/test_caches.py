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
