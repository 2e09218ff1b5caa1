"""New files take versions made ahead (store/versions.ReadyVersions): the request that creates a
file makes no inode and no header on the event loop, every file still gets a fresh file key
(I2), and nothing made ahead is ever left in the store."""

import os
from collections.abc import Callable

import pytest

from .helpers import META, Daemon, decrypt_backing, traced
from .test_journal import wait_for

FILES = 20


@pytest.fixture
def daemon(daemons: Callable[..., Daemon]) -> Daemon:
    started = daemons("auto")
    started.start()
    return started


def test_a_create_takes_a_version_made_ahead(daemon: Daemon) -> None:
    mnt, tmp = daemon.mnt, daemon.store / META / "tmp"
    (mnt / "first").write_bytes(b"starts the thread that makes them")
    wait_for(lambda: not os.listdir(tmp))  # published
    with traced(daemon.pid, "openat,linkat") as calls:
        for i in range(FILES):
            fd = os.open(mnt / f"f{i}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            os.close(fd)
    loop = [(call, args) for tid, call, args in calls if tid == daemon.pid]
    made_here = [args for call, args in loop if call == "openat" and "O_CREAT" in args]
    assert made_here == [], f"the event loop made {len(made_here)} temps: {made_here[:2]}"
    named = [args for call, args in loop if call == "linkat" and f"{META}/tmp/v-" in args]
    assert len(named) == FILES, loop


def test_versions_made_ahead_each_have_a_fresh_key_and_leave_nothing(daemon: Daemon) -> None:
    """Each file made from a version made ahead decrypts with Go `age` (I4) and has a header
    of its own (a fresh file key: I2); at unmount the ones not taken go, nothing is left in
    `.cagefs/tmp/`, and a kill -9 leaves none either (they have no name until taken)."""
    mnt, store = daemon.mnt, daemon.store
    for i in range(FILES):
        (mnt / f"f{i}").write_bytes(b"file %d\n" % i)
    daemon.stop_clean()
    assert os.listdir(store / META / "tmp") == []
    headers = set()
    for i in range(FILES):
        backing = store / f"f{i}.age"
        assert decrypt_backing(backing, daemon.identity) == b"file %d\n" % i
        data = backing.read_bytes()
        headers.add(data[: data.index(b"\n---")])  # the stanzas: key shares, wrapped keys, proof
    assert len(headers) == FILES, "two files share a header: a version given out twice"

    daemon.start()
    (mnt / "g").write_bytes(b"taken")
    wait_for(lambda: os.listdir(store / META / "tmp") == [])
    daemon.kill9()
    assert os.listdir(store / META / "tmp") == [], "versions made ahead outlived the daemon"
    daemon.start()
    assert (mnt / "g").read_bytes() == b"taken"
