"""store/lock.py without FUSE: exclusive, records its holder, shared through fork, gone with
the process that holds it, never inherited across exec."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from cagefs.store.lock import LOCK_FILE, StoreBusy, lock_store


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / ".cagefs").mkdir()
    return tmp_path


def test_second_lock_is_refused_naming_the_holder(root: Path) -> None:
    with lock_store(root, "/mnt/private"), pytest.raises(StoreBusy) as busy:
        lock_store(root, "/elsewhere")
    message = f"{root} is in use: mounted on /mnt/private by pid {os.getpid()}"
    assert str(busy.value) == message
    assert busy.value.mountpoint == "/mnt/private" and busy.value.pid == os.getpid()
    verb = pytest.raises(StoreBusy, match=r"`cagefs init` running by pid \d+$")
    with lock_store(root, "init"), verb:  # released: free again; a verb is named as one
        lock_store(root, "x")
    assert (root / LOCK_FILE).read_bytes() == b""


def test_forked_child_keeps_the_lock_after_the_parent_forgets_it(root: Path) -> None:
    lock = lock_store(root, "/mnt/m")
    claimed, claimed_w = os.pipe()
    done, done_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the daemon: claims the lock, then waits until told to exit
        lock.claim()
        os.write(claimed_w, b"claimed")
        os.read(done, 1)
        os._exit(0)
    try:
        assert os.read(claimed, 7) == b"claimed"
        lock.forget()
        lock.release()  # a no-op once forgotten: must not unlock the child's lock
        with pytest.raises(StoreBusy) as busy:
            lock_store(root, "/mnt/n")
        assert busy.value.pid == pid
    finally:
        os.write(done_w, b"x")
        os.waitpid(pid, 0)
        for fd in (claimed, claimed_w, done, done_w):
            os.close(fd)
    lock_store(root, "/mnt/n").release()  # gone with the child


def test_an_exec_child_does_not_inherit_the_lock(root: Path) -> None:
    with lock_store(root, "/mnt/m"):
        child = subprocess.Popen(
            [sys.executable, "-c", "import time; time.sleep(60)"], close_fds=False
        )
    try:
        lock_store(root, "/mnt/n").release()
    finally:
        child.kill()
        child.wait()
