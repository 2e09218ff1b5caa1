"""When a file is published (I3): at its last release, at fsync, or by the group publish of a
file nobody has open; never at the close of one copy of a descriptor while another still writes.

Closing any copy (`dup` + `close`, a child that exits or execs with the writer's descriptor)
sends the daemon a FLUSH on the one handle they all share. A crash after such a flush, with the
writer still holding its descriptor, must leave the store with the old version (or nothing for
a new file), never the half written one.
"""

import contextlib
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from .helpers import STRATEGIES, SUFFIX, Daemon, decrypt_backing, opened

INTERVAL = "0.05"  # group publishes every 50 ms: a round surely passes during ROUNDS
ROUNDS = 0.6
OLD = b"old version\n" * 1000


@pytest.fixture(params=STRATEGIES)
def quick(request: pytest.FixtureRequest, daemons: Callable[..., Daemon]) -> Daemon:
    """A mount, per strategy, whose group publishes come every 50 ms."""
    daemon = daemons(request.param, options=["--publish-interval", INTERVAL])
    daemon.start()
    return daemon


def close_a_copy_by_dup(fd: int) -> None:
    os.close(os.dup(fd))


def close_a_copy_by_fork(fd: int) -> None:
    pid = os.fork()
    if pid == 0:
        os._exit(0)  # the child's copy of fd is closed as it exits
    os.waitpid(pid, 0)


def close_a_copy_by_exec(fd: int) -> None:
    subprocess.run(["/bin/true"], pass_fds=(fd,), check=True)


CLOSERS = {"dup": close_a_copy_by_dup, "fork": close_a_copy_by_fork, "exec": close_a_copy_by_exec}


def wait_published(daemon: Daemon, name: str, data: bytes) -> None:
    """Wait for a closed file's group publish (seconds on a loaded machine), then let a few
    more rounds pass: what they would wrongly publish is then published too."""
    deadline = time.monotonic() + 30
    while stored(daemon.store, name, daemon.identity) != data:
        assert time.monotonic() < deadline, f"{name} was never published"
        time.sleep(0.05)
    time.sleep(ROUNDS)


def stored(store: Path, name: str, identity: Path) -> bytes | None:
    path = store / (name + SUFFIX)
    return decrypt_backing(path, identity) if path.exists() else None


@contextlib.contextmanager
def writers(mnt: Path) -> Iterator[dict[str, int]]:
    """For every way of closing a copy: a new file and an in-place edit of an existing one,
    each written, then a copy of its descriptor closed; the descriptors stay open."""
    fds: dict[str, int] = {}
    try:
        for how, close_a_copy in CLOSERS.items():
            new = os.open(mnt / f"new-{how}", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            fds[f"new-{how}"] = new
            os.write(new, b"half")
            close_a_copy(new)
            edit = os.open(mnt / f"edit-{how}", os.O_RDWR)
            fds[f"edit-{how}"] = edit
            os.pwrite(edit, b"HALF", 0)
            close_a_copy(edit)
        yield fds
    finally:
        for fd in fds.values():
            with contextlib.suppress(OSError):
                os.close(fd)


def test_closing_a_copy_of_a_descriptor_publishes_nothing(quick: Daemon) -> None:
    mnt, store = quick.mnt, quick.store
    for how in CLOSERS:
        (mnt / f"edit-{how}").write_bytes(OLD)
        with opened(mnt / f"edit-{how}", os.O_RDONLY) as fd:
            os.fsync(fd)
    with writers(mnt):
        (mnt / "closed").write_bytes(b"closed by its only writer\n")
        wait_published(quick, "closed", b"closed by its only writer\n")
        quick.kill9()
    torn = {}
    for how in CLOSERS:
        new = stored(store, f"new-{how}", quick.identity)
        if new is not None:
            torn[f"new-{how}"] = new[:20]
        edit = stored(store, f"edit-{how}", quick.identity)
        if edit != OLD:
            torn[f"edit-{how}"] = edit[:20] if edit else edit
    assert not torn, f"published while a writer still held the file: {torn}"


def test_a_shell_writer_with_child_processes_is_published_whole(
    quick: Daemon, tmp_path: Path
) -> None:
    """`exec 3>f; echo a >&3; /bin/true; echo b >&3`: killed before its end, the store holds
    nothing of f; run to the end, f holds both lines."""
    mnt, store = quick.mnt, quick.store
    script = "exec 3>f; echo a >&3; /bin/true; echo a2 >&3; /bin/true; echo ready; sleep 60"
    shell = subprocess.Popen(["bash", "-c", script], cwd=mnt, stdout=subprocess.PIPE)
    try:
        assert shell.stdout is not None
        assert shell.stdout.readline() == b"ready\n"
        (mnt / "g").write_bytes(b"control\n")
        wait_published(quick, "g", b"control\n")
        quick.kill9()
    finally:
        shell.kill()
        shell.wait()
    assert stored(store, "f", quick.identity) is None, "the shell's half file was published"

    quick.start()
    script = "exec 3>f; echo a >&3; /bin/true; sleep 0.2; echo b >&3; exec 3>&-"
    subprocess.run(["bash", "-c", script], cwd=mnt, check=True)
    assert (mnt / "f").read_bytes() == b"a\nb\n"
    quick.assert_store_matches()


def test_writes_after_a_copy_was_closed_are_kept(quick: Daemon) -> None:
    """The version sealed at the flush is not the end: later writes land, and the last
    release publishes the whole file."""
    mnt = quick.mnt
    (mnt / "edit").write_bytes(OLD)
    for how, close_a_copy in CLOSERS.items():
        with opened(mnt / f"new-{how}", os.O_WRONLY | os.O_CREAT | os.O_TRUNC) as fd:
            os.write(fd, b"one\n")
            close_a_copy(fd)
            os.write(fd, b"two\n")
        assert (mnt / f"new-{how}").read_bytes() == b"one\ntwo\n"
    with opened(mnt / "edit", os.O_RDWR) as fd:
        os.pwrite(fd, b"EDIT", 0)
        close_a_copy_by_exec(fd)
        os.pwrite(fd, b"MORE", 4)
        assert os.pread(fd, 8, 0) == b"EDITMORE"
    assert (mnt / "edit").read_bytes() == b"EDITMORE" + OLD[8:]
    quick.assert_store_matches()


def test_a_version_that_cannot_be_published_stops_nothing(
    quick: Daemon, tmp_path: Path
) -> None:
    """A directory named like a file's backing file, made behind the mount's back: the
    publish of that file fails, the log names it, the mount serves on, and the version is
    kept (pending, then at unmount in .cagefs/recovered/), never lost."""
    mnt, store = quick.mnt, quick.store
    with opened(mnt / "x", os.O_WRONLY | os.O_CREAT) as fd:  # not published while open
        os.write(fd, b"s\n")
        # Made before x ever reaches the store: the mount refuses to create `x` beside an
        # existing `x.age` (EEXIST), so only someone behind its back gets here.
        (store / f"x{SUFFIX}").mkdir()
    (mnt / "y").write_bytes(b"other\n")
    wait_published(quick, "y", b"other\n")  # other files go on being published
    assert (mnt / "x").read_bytes() == b"s\n"
    (mnt / "z").write_bytes(b"still serving\n")
    assert (mnt / "z").read_bytes() == b"still serving\n"
    with opened(mnt / "x", os.O_RDONLY) as fd, pytest.raises(OSError):
        os.fsync(fd)
    quick.stop_clean()
    log = quick.log_text()
    assert "x: could not publish" in log, log[-2000:]
    recovered = list((store / ".cagefs" / "recovered").iterdir())
    assert [decrypt_backing(p, quick.identity) for p in recovered] == [b"s\n"]
    assert log.count("x: could not publish") == 2, "logged once pending, once kept aside"
