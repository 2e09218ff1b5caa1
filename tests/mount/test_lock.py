"""One daemon per store (DESIGN I10): a second mount is refused while the first serves, waits
while an unmounted daemon is still saving, and a killed daemon leaves no lock behind."""

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from cagefs.cli.mounts import status_socket
from cagefs.errors import ExitCode
from cagefs.store.layout import TMP_DIR
from cagefs.store.lock import LOCK_FILE

from .helpers import (
    STOP_TIMEOUT,
    Daemon,
    cagefs,
    child_pids,
    decrypt_backing,
    force_unmount,
    is_mounted,
    one_line,
    umount_cli,
)

KEEP_TEMPS = ["--publish-interval", "3600"]  # closed files wait in .cagefs/tmp until unmount


def temps(store: Path) -> set[str]:
    return {entry.name for entry in (store / TMP_DIR).iterdir()}


def refusal(*args: object) -> str:
    proc = cagefs("mount", *args)
    assert proc.returncode != 0, "a second mount of a store in use was accepted"
    assert proc.returncode == ExitCode.STORE_BUSY, proc.stderr
    return one_line(proc.stderr)


@pytest.mark.parametrize("where", ["same mount point", "another mount point"])
def test_second_mount_is_refused_and_the_first_keeps_serving(
    daemons: Callable[..., Daemon], tmp_path: Path, where: str
) -> None:
    first = daemons("auto", options=KEEP_TEMPS)
    first.start()
    (first.mnt / "unpublished.txt").write_text("closed, not yet published\n")
    waiting = temps(first.store)
    assert waiting, "the closed file should wait in .cagefs/tmp (publish interval 1 h)"

    other = first.mnt if where == "same mount point" else tmp_path / "mnt2"
    other.mkdir(exist_ok=True)
    line = refusal(first.store, other, "-i", first.identity)
    holder = f"mounted on {first.mnt} by pid {first.pid}"
    assert line == f"cagefs mount: {first.store} is in use: {holder}"
    assert not is_mounted(tmp_path / "mnt2")

    assert temps(first.store) == waiting, "the refused mount touched the first one's temps"
    assert (first.mnt / "unpublished.txt").read_text() == "closed, not yet published\n"
    (first.mnt / "after.txt").write_text("still serving\n")
    first.stop_clean()
    for name, text in [("unpublished.txt", "closed, not yet published\n"), ("after.txt", None)]:
        plain = decrypt_backing(first.store / f"{name}.age", first.identity).decode()
        assert text is None or plain == text


def test_background_mount_names_the_daemon_not_its_parent(
    daemons: Callable[..., Daemon], tmp_path: Path
) -> None:
    daemon = daemons()  # only for its store, identity and mount point; started by the CLI
    mnt2 = tmp_path / "mnt2"
    mnt2.mkdir()
    proc = cagefs("mount", daemon.store, daemon.mnt, "-i", daemon.identity)
    assert proc.returncode == 0, proc.stderr
    try:
        line = refusal(daemon.store, mnt2, "-i", daemon.identity)
        prefix = f"cagefs mount: {daemon.store} is in use: mounted on {daemon.mnt} by pid "
        assert line.startswith(prefix), line
        pid = int(line.removeprefix(prefix))
        # The command that mounted has exited: the pid named is the daemon serving the mount.
        assert b"cagefs" in Path(f"/proc/{pid}/cmdline").read_bytes()
        assert any(
            os.readlink(fd) == "/dev/fuse" for fd in Path(f"/proc/{pid}/fd").iterdir()
        ), f"pid {pid} does not hold /dev/fuse"
        umount_cli(daemon.mnt)
    finally:
        force_unmount(daemon.mnt)


def test_no_sealer_holds_the_lock_and_a_killed_daemon_leaves_none(
    daemons: Callable[..., Daemon],
) -> None:
    daemon = daemons("stream")
    daemon.start()
    lock = str(daemon.store / LOCK_FILE)
    with open(daemon.mnt / "big.bin", "wb") as f:  # past the first MiB: a sealer seals it
        f.write(os.urandom(4 << 20))
        sealers = child_pids(daemon.pid)
        assert sealers, "no sealer process was running"
        for pid in sealers:
            held = {os.readlink(fd) for fd in Path(f"/proc/{pid}/fd").iterdir()}
            assert lock not in held, f"sealer {pid} inherited the store lock"
    daemon.kill9()
    daemon.start()  # at once: sealers of the killed daemon may still be exiting
    assert is_mounted(daemon.mnt)


def test_a_mount_waits_for_an_unmounted_daemon_still_saving(
    daemons: Callable[..., Daemon],
) -> None:
    """18.8: after `fusermount3 -u` the old daemon still publishes; a new mount must neither
    remove its temps nor serve before it has finished (it waits, then mounts)."""
    old = daemons("memory", options=KEEP_TEMPS)
    old.start()
    (old.mnt / "late.txt").write_text("published after the unmount\n")
    waiting = temps(old.store)
    assert waiting
    os.kill(old.pid, signal.SIGSTOP)  # as if it were busy saving large files
    try:
        subprocess.run(["fusermount3", "-u", str(old.mnt)], check=True, timeout=60)
        new = subprocess.Popen(
            [sys.executable, "-m", "cagefs", "mount", old.store, old.mnt, "-i", old.identity],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert new.stderr is not None
        notice = new.stderr.readline()
        assert notice.startswith(f"cagefs mount: waiting for pid {old.pid} to finish saving")
        assert new.poll() is None and not is_mounted(old.mnt)
        assert temps(old.store) == waiting
    finally:
        os.kill(old.pid, signal.SIGCONT)
    assert old.proc is not None and old.proc.wait(STOP_TIMEOUT) == 0
    old.proc = None
    try:
        assert new.wait(STOP_TIMEOUT) == 0, new.stderr.read()
        assert (old.mnt / "late.txt").read_text() == "published after the unmount\n"
        umount_cli(old.mnt)
    finally:
        force_unmount(old.mnt)
    assert not temps(old.store)


def test_init_of_a_store_being_initialised_is_refused(tmp_path: Path, identity: Path) -> None:
    """Offline verbs that write the store take the lock too."""
    from cagefs.store.lock import lock_store

    root = tmp_path / "new"
    (root / ".cagefs").mkdir(parents=True)
    with lock_store(root, "init"):
        proc = cagefs("init", root, "--identity", identity)
    assert proc.returncode == ExitCode.STORE_BUSY
    line = one_line(proc.stderr)
    assert line == f"cagefs init: {root} is in use: `cagefs init` running by pid {os.getpid()}"
    assert cagefs("init", root, "--identity", identity).returncode == 0


def test_cagefs_umount_returns_only_once_the_daemon_has_saved_and_exited(
    daemons: Callable[..., Daemon],
) -> None:
    daemon = daemons("stream", options=KEEP_TEMPS)
    daemon.start()
    (daemon.mnt / "last.txt").write_text("saved before umount returns\n")
    assert temps(daemon.store)
    os.kill(daemon.pid, signal.SIGSTOP)  # as if it were busy saving large files
    try:
        umount = subprocess.Popen(
            [sys.executable, "-m", "cagefs", "umount", daemon.mnt],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert umount.stderr is not None
        assert umount.stderr.readline() == (
            "cagefs umount: waiting for pending writes to be published...\n"
        )
        assert umount.poll() is None
    finally:
        os.kill(daemon.pid, signal.SIGCONT)
    assert umount.wait(STOP_TIMEOUT) == 0
    assert daemon.proc is not None and daemon.proc.poll() == 0, "umount returned first"
    daemon.proc = None
    assert not temps(daemon.store)
    plain = decrypt_backing(daemon.store / "last.txt.age", daemon.identity)
    assert plain == b"saved before umount returns\n"


def test_idle_unmounts_a_quiet_mount_and_not_a_busy_one(daemons: Callable[..., Daemon]) -> None:
    """15.4: --idle 1s. An open file keeps the mount (several idle periods pass); once it is
    closed and nothing asks, the daemon saves, unmounts and exits 0 by itself."""
    daemon = daemons("stream", options=["--idle", "1s", *KEEP_TEMPS])
    daemon.start()
    with open(daemon.mnt / "held.txt", "w") as held:
        held.write("written while held open\n")
        held.flush()
        assert daemon.proc is not None
        with pytest.raises(subprocess.TimeoutExpired):
            daemon.proc.wait(5)  # five idle periods with a file open: still serving
        assert is_mounted(daemon.mnt)
    assert daemon.proc.wait(STOP_TIMEOUT) == 0, daemon.log_text()[-2000:]
    daemon.proc = None
    assert not is_mounted(daemon.mnt)
    assert not temps(daemon.store), "the idle unmount did not save everything"
    plain = decrypt_backing(daemon.store / "held.txt.age", daemon.identity)
    assert plain == b"written while held open\n"
    assert "idle for 1 s: saving and unmounting" in daemon.log_text()


def test_status_shows_an_open_streaming_file(daemons: Callable[..., Daemon]) -> None:
    """15.5: asked of the daemon over its socket (root only), not guessed from /proc."""
    daemon = daemons("stream", options=KEEP_TEMPS)
    daemon.start()
    with open(daemon.mnt / "big.bin", "wb") as f:
        f.write(os.urandom(3 << 20))
        f.flush()
        proc = cagefs("status", daemon.mnt, "--json")
        assert proc.returncode == 0, proc.stderr
        [report] = json.loads(proc.stdout)
        assert (report["store"], report["mountpoint"]) == (str(daemon.store), str(daemon.mnt))
        assert report["pid"] == daemon.pid and report["strategy"] == "stream"
        [big] = [entry for entry in report["files"] if entry["path"] == "big.bin"]
        assert (big["state"], big["size"], big["handles"]) == ("streaming", 3 << 20, 1)
        assert report["open_handles"] >= 1 and report["sealers"]["running"] >= 1
        text = cagefs("status", daemon.mnt).stdout
        assert f"{daemon.mnt}: {daemon.store}, pid {daemon.pid}" in text
        assert "streaming" in text and "big.bin" in text
    socket_path = status_socket(str(daemon.mnt))
    assert socket_path.stat().st_mode & 0o777 == 0o600
    [report] = json.loads(cagefs("status", daemon.mnt, "--json").stdout)
    [big] = [entry for entry in report["files"] if entry["path"] == "big.bin"]
    assert big["state"] == "pending" and report["unpublished"]["files"] == 1
    daemon.stop_clean()
    assert not socket_path.exists()
