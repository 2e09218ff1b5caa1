"""Mount options a person sets: `-o ro`, `-o allow_other`, and CAGEFS_STRATEGY."""

import errno
import os
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from .helpers import Daemon, child_pids

NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


def write_file_then_stop(daemons: Callable[..., Daemon], name: str, data: bytes) -> None:
    writer = daemons()
    writer.start()
    (writer.mnt / name).write_bytes(data)
    writer.stop_clean()


def test_read_only_mount_serves_reads_and_refuses_writes(
    daemons: Callable[..., Daemon],
) -> None:
    write_file_then_stop(daemons, "kept.txt", b"kept\n")
    daemon = daemons(options=["-o", "ro"])
    daemon.start()
    assert (daemon.mnt / "kept.txt").read_bytes() == b"kept\n"
    for attempt in (
        lambda: (daemon.mnt / "new.txt").write_bytes(b"x"),
        lambda: (daemon.mnt / "kept.txt").write_bytes(b"changed"),
        lambda: (daemon.mnt / "dir").mkdir(),
        lambda: (daemon.mnt / "kept.txt").unlink(),
    ):
        with pytest.raises(OSError) as caught:
            attempt()
        assert caught.value.errno == errno.EROFS
    assert not child_pids(daemon.pid), "a read-only mount starts no sealer process"
    before = sorted(p.name for p in daemon.store.iterdir())
    daemon.stop_clean()
    assert sorted(p.name for p in daemon.store.iterdir()) == before


@pytest.fixture
def shared_mountpoint() -> Iterator[Path]:
    """A mountpoint other users can reach (pytest's tmp dirs are private to root)."""
    parent = Path(tempfile.mkdtemp(prefix="cagefs-shared-"))
    parent.chmod(0o755)
    yield parent / "mnt"
    for path in (parent / "mnt", parent):
        if path.exists():
            path.rmdir()


@pytest.mark.parametrize("allow_other", [False, True])
def test_other_users_need_allow_other(
    daemons: Callable[..., Daemon], shared_mountpoint: Path, allow_other: bool
) -> None:
    daemon = daemons(mnt=shared_mountpoint, options=["-o", "allow_other"] if allow_other else [])
    daemon.start()
    (daemon.mnt / "public.txt").write_bytes(b"for everyone\n")
    (daemon.mnt / "public.txt").chmod(0o644)
    (daemon.mnt / "private.txt").write_bytes(b"root only\n")
    (daemon.mnt / "private.txt").chmod(0o600)
    public = subprocess.run([*NOBODY, "cat", daemon.mnt / "public.txt"], capture_output=True)
    private = subprocess.run([*NOBODY, "cat", daemon.mnt / "private.txt"], capture_output=True)
    if allow_other:
        assert public.returncode == 0 and public.stdout == b"for everyone\n"
        # default_permissions: the kernel checks modes against the attributes we return
        assert private.returncode != 0 and b"Permission denied" in private.stderr
    else:
        assert public.returncode != 0 and b"Permission denied" in public.stderr
    daemon.stop_clean()


@pytest.mark.parametrize("strategy", ["stream", "memory", "tempfile"])
def test_strategy_from_environment(daemons: Callable[..., Daemon], strategy: str) -> None:
    daemon = daemons(env={"CAGEFS_STRATEGY": strategy})
    daemon.start()
    data = os.urandom(300_000)
    (daemon.mnt / "f.bin").write_bytes(data)
    assert (daemon.mnt / "f.bin").read_bytes() == data
    assert f"(strategy {strategy})" in daemon.log_text()
    daemon.assert_store_matches()
