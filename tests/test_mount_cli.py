"""`cagefs mount` refusals that happen before any FUSE work: one line, non-zero, nothing mounted;
and a real background mount whose -i key is unlocked by --passfile.

Also the small pieces the mount command is built from: -o and size parsing, and sd_notify.
"""

import argparse
import contextlib
import errno
import os
import re
import socket
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import KeyFile, make_keyfile
from mount.helpers import cagefs, force_unmount, one_line, umount_cli

from cagefs.age.keys import parse_recipient
from cagefs.cli.daemon import run_in_background
from cagefs.cli.mount import CONVERTERS, parse_duration, parse_size
from cagefs.cli.mountopts import parse_mount_options
from cagefs.cli.mounts import fallback_log_file, is_mount_point
from cagefs.cli.sdnotify import notify
from cagefs.errors import CageError, ExitCode, UsageError
from cagefs.store import init_store
from cagefs.store.lock import StoreBusy, lock_store

PASSPHRASE = "mount test passphrase"


@pytest.fixture
def store(tmp_path: Path) -> Path:
    """A store with its own identity under PASSPHRASE (cheap scrypt, made through the API)."""
    root = tmp_path / "store"
    init_store(root, passphrase=PASSPHRASE.encode(), log_n=10)
    return root


@pytest.fixture
def passfile(tmp_path: Path) -> Path:
    path = tmp_path / "passfile"
    path.write_text(PASSPHRASE + "\n")
    return path


@pytest.fixture
def mnt(tmp_path: Path) -> Iterator[Path]:
    """A mount point; whatever a failing test mounted there is unmounted."""
    path = tmp_path / "mnt"
    path.mkdir()
    yield path
    force_unmount(path)


def refused(code: ExitCode, *args: object, env: dict[str, str] | None = None) -> str:
    """Run `cagefs mount ...`, expect a one-line refusal with exit `code`, return that line."""
    proc = cagefs("mount", *args, env=env)
    assert proc.returncode == code, f"exit {proc.returncode}, not {code!r}: {proc.stderr}"
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("cagefs mount: ")
    return lines[0].removeprefix("cagefs mount: ")


def assert_nothing_mounted(mnt: Path) -> None:
    assert not is_mount_point(str(mnt))


def test_missing_store(tmp_path: Path, mnt: Path, passfile: Path) -> None:
    assert refused(ExitCode.NO_STORE, tmp_path / "absent", mnt, "--passfile", passfile).endswith(
        "no such store"
    )
    assert_nothing_mounted(mnt)


def test_directory_that_is_not_a_store(tmp_path: Path, mnt: Path, passfile: Path) -> None:
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "file.age").write_text("not ours")
    assert "is not a cagefs store" in refused(ExitCode.NO_STORE, plain, mnt, "--passfile", passfile)
    assert_nothing_mounted(mnt)


def test_wrong_passphrase(tmp_path: Path, store: Path, mnt: Path) -> None:
    wrong = tmp_path / "wrong"
    wrong.write_text("not the passphrase\n")
    assert (
        refused(ExitCode.BAD_KEY, store, mnt, "--passfile", wrong)
        == f"wrong passphrase for store {store}"
    )
    assert_nothing_mounted(mnt)


def test_wrong_identity(tmp_path: Path, store: Path, mnt: Path, keyfile: KeyFile) -> None:
    assert (
        refused(ExitCode.BAD_KEY, store, mnt, "-i", keyfile.path)
        == f"this identity cannot read store {store}"
    )
    assert_nothing_mounted(mnt)


def test_wrong_identity_on_an_identity_store(tmp_path: Path, mnt: Path, keyfile: KeyFile) -> None:
    root = tmp_path / "keyed"
    assert cagefs("init", root, "--identity", keyfile.path).returncode == 0
    stranger = make_keyfile(tmp_path / "stranger.txt")
    assert (
        refused(ExitCode.BAD_KEY, root, mnt, "-i", stranger.path)
        == f"this identity cannot read store {root}"
    )
    message = refused(ExitCode.USAGE, root, mnt)
    assert message == f"store {root} keeps no identity of its own: give -i IDENTITY_FILE"
    assert_nothing_mounted(mnt)


def test_identity_file_that_is_not_one(tmp_path: Path, store: Path, mnt: Path) -> None:
    bogus = tmp_path / "bogus.txt"
    bogus.write_text("AGE-SECRET-KEY-1NOTAKEY\n")
    message = refused(ExitCode.FAILURE, store, mnt, "-i", bogus)
    assert "AGE-SECRET-KEY-1NOTAKEY" not in message  # a mistyped secret is never echoed
    assert_nothing_mounted(mnt)


def test_missing_mountpoint(tmp_path: Path, store: Path, passfile: Path) -> None:
    absent = tmp_path / "absent"
    assert refused(ExitCode.MOUNTPOINT, store, absent, "--passfile", passfile).endswith(
        "mount point does not exist"
    )
    assert not absent.exists()


def test_non_empty_mountpoint(store: Path, mnt: Path, passfile: Path) -> None:
    (mnt / "something").write_text("x")
    assert refused(ExitCode.MOUNTPOINT, store, mnt, "--passfile", passfile).endswith(
        "mount point is not empty"
    )
    assert_nothing_mounted(mnt)


def test_mountpoint_that_is_a_file(tmp_path: Path, store: Path, passfile: Path) -> None:
    file = tmp_path / "file"
    file.write_text("x")
    assert refused(ExitCode.MOUNTPOINT, store, file, "--passfile", passfile).endswith(
        "mount point is not a directory"
    )


def test_mountpoint_inside_the_store(store: Path, passfile: Path) -> None:
    inside = store / "sub"
    inside.mkdir()
    assert "mount point is inside the store" in refused(
        ExitCode.MOUNTPOINT, store, inside, "--passfile", passfile
    )
    assert_nothing_mounted(inside)


def test_busy_mountpoint(store: Path, mnt: Path, passfile: Path) -> None:
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "cagefs-test", mnt], check=True)
    try:
        assert refused(ExitCode.MOUNTPOINT, store, mnt, "--passfile", passfile).endswith(
            "is busy: something is already mounted there"
        )
    finally:
        subprocess.run(["umount", mnt], check=True)
    assert_nothing_mounted(mnt)


def test_unknown_mount_option(store: Path, mnt: Path, passfile: Path) -> None:
    message = refused(ExitCode.USAGE, store, mnt, "--passfile", passfile, "-o", "ro,nonempty")
    assert message.startswith("unknown mount option 'nonempty'")
    assert_nothing_mounted(mnt)


def test_bad_strategy_in_environment(store: Path, mnt: Path, passfile: Path) -> None:
    env = {**os.environ, "CAGEFS_STRATEGY": "fastest"}
    assert refused(ExitCode.USAGE, store, mnt, "--passfile", passfile, env=env).startswith(
        "CAGEFS_STRATEGY="
    )
    assert_nothing_mounted(mnt)


def test_umount_of_something_not_mounted(mnt: Path) -> None:
    proc = cagefs("umount", mnt)
    assert proc.returncode == ExitCode.MOUNTPOINT
    assert proc.stderr == f"cagefs umount: {mnt} is not mounted\n"


def protected_identity(kind: str, directory: Path) -> tuple[Path, str]:
    """An identity file locked with PASSPHRASE, and its recipient: an identity file encrypted
    with a passphrase as `age -p` makes it, or a passphrase-protected OpenSSH key."""
    passfile = directory / "key-passfile"
    passfile.write_text(PASSPHRASE + "\n")
    if kind == "age -p":
        plain = make_keyfile(directory / "plain-key.txt")
        locked = directory / "key.age"
        proc = cagefs("encrypt", "--passfile", passfile, "-o", locked, plain.path)
        assert proc.returncode == 0, proc.stderr
        plain.path.unlink()
        return locked, plain.recipient
    locked = directory / "id_ed25519"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", PASSPHRASE, "-C", "t", "-f", str(locked)],
        check=True,
    )
    return locked, (directory / "id_ed25519.pub").read_text().strip()


@pytest.mark.parametrize("kind", ["age -p", "ssh key"])
def test_passfile_unlocks_a_protected_identity(kind: str, tmp_path: Path, mnt: Path) -> None:
    """With -i, --passfile unlocks that file: a background mount needs no terminal (systemd)."""
    key, recipient = protected_identity(kind, tmp_path)
    root = tmp_path / "keyed"
    init_store(root, [parse_recipient(recipient)], identities=[])
    passfile = tmp_path / "key-passfile"
    wrong = tmp_path / "wrong"
    wrong.write_text("not the passphrase\n")
    assert "wrong passphrase" in refused(
        ExitCode.BAD_KEY, root, mnt, "-i", key, "--passfile", wrong
    )
    assert_nothing_mounted(mnt)
    try:
        proc = cagefs("mount", root, mnt, "-i", key, "--passfile", passfile)
        assert proc.returncode == 0, proc.stderr
        (mnt / "hello.txt").write_text("hello through a locked key\n")
        assert (mnt / "hello.txt").read_text() == "hello through a locked key\n"
        umount_cli(mnt)
    finally:
        force_unmount(mnt)
    assert (root / "hello.txt.age").read_bytes().startswith(b"age-encryption.org/v1\n")


def test_mount_options() -> None:
    """What mount(8) and fstab pass (15.1): kernel flags on, their own ignored, ours parsed
    and checked by the same types as the flags."""
    empty = parse_mount_options([], CONVERTERS)
    assert (empty.kernel, empty.values, empty.flags) == ([], {}, set())
    found = parse_mount_options(
        [
            "rw,ro,allow_other,default_permissions,dev,suid,exec,noatime,auto,nofail,_netdev",
            "x-systemd.automount,comment=x,subtype=cagefs,fsname=mine,identity=/k1,identity=/k2",
            "passfile=/p,strategy=stream,memory-threshold=1M,cache_mib=8,publish_interval=2,debug",
        ],
        CONVERTERS,
    )
    assert found.kernel == ["dev", "suid", "exec", "noatime"]
    assert found.flags == {"read_only", "allow_other", "debug"}
    assert found.values == {
        "fsname": "mine",
        "identity": ["/k1", "/k2"],
        "passfile": "/p",
        "strategy": "stream",
        "memory_threshold": 1 << 20,
        "cache_mib": 8,
        "publish_interval": 2.0,
    }
    with pytest.raises(UsageError, match="unknown mount option 'nonempty'"):
        parse_mount_options(["nonempty"], CONVERTERS)
    assert parse_mount_options(["nonempty"], CONVERTERS, sloppy=True).kernel == []
    with pytest.raises(UsageError, match="-o publish_interval=-1: '-1' must be more than 0"):
        parse_mount_options(["publish_interval=-1"], CONVERTERS)
    with pytest.raises(UsageError, match="files only") as secret:
        parse_mount_options(["passphrase=hunter2"], CONVERTERS)
    assert "hunter2" not in str(secret.value)


@pytest.mark.parametrize(
    ("text", "size"),
    [("0", 0), ("65536", 65536), ("64K", 64 << 10), ("64M", 64 << 20), ("1GiB", 1 << 30)],
)
def test_parse_size(text: str, size: int) -> None:
    assert parse_size(text) == size


def test_parse_size_refuses_nonsense() -> None:
    with pytest.raises(ValueError):
        parse_size("lots")


@pytest.mark.parametrize("abstract", [False, True])
def test_sd_notify(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, abstract: bool) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        if abstract:
            name = f"cagefs-test-{os.getpid()}-{os.urandom(4).hex()}"
            server.bind("\0" + name)
            monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        else:
            server.bind(str(tmp_path / "notify"))
            monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify"))
        assert notify("READY=1")
        assert server.recv(4096) == b"READY=1"


def test_sd_notify_without_a_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert not notify("READY=1")
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "nobody-listens"))
    assert not notify("READY=1")


@pytest.fixture
def reap() -> Iterator[None]:
    """Wait for the forked children: in real use the parent exits and init reaps them."""
    yield
    with contextlib.suppress(ChildProcessError):
        while True:
            os.waitpid(-1, 0)


@pytest.mark.usefixtures("reap")
def test_background_returns_once_ready() -> None:
    assert run_in_background(lambda ready: ready()) == 0


@pytest.mark.usefixtures("reap")
def test_background_reports_the_childs_one_line() -> None:
    def fail(ready: object) -> None:
        raise CageError("cannot mount: the reason")

    with pytest.raises(CageError) as caught:
        run_in_background(fail)
    assert str(caught.value) == "cannot mount: the reason"


@pytest.mark.usefixtures("reap")
def test_background_notices_a_child_that_dies_silently() -> None:
    with pytest.raises(CageError, match="ended before the mount was ready"):
        run_in_background(lambda ready: os._exit(3))


@pytest.mark.skipif(os.path.exists("/dev/log"), reason="needs a host without syslog")
@pytest.mark.parametrize("trouble", [False, True], ids=["quiet", "an error"])
def test_background_mount_without_syslog_logs_to_a_file(
    store: Path, mnt: Path, passfile: Path, trouble: bool
) -> None:
    """12.14: with no syslog socket every line used to be dropped. The file stays if anything
    worse than INFO was logged, and goes away after a quiet run."""
    (store / "damaged.txt.age").write_bytes(b"age-encryption.org/v1\n-> garbage\n")
    proc = cagefs("mount", store, mnt, "--passfile", passfile)
    notice = "cagefs mount: no syslog here: the log is in "
    log_file = Path(proc.stderr.removeprefix(notice).strip())
    try:
        assert proc.returncode == 0, proc.stderr
        assert proc.stderr.startswith(notice) and proc.stderr.count("\n") == 1, proc.stderr
        assert log_file.stat().st_mode & 0o077 == 0, "the log names files: private to root"
        assert f"serving {store} at {mnt}" in log_file.read_text()
        if trouble:
            with pytest.raises(OSError):
                (mnt / "damaged.txt").read_bytes()
        umount_cli(mnt)
        if trouble:
            text = log_file.read_text()
            assert "ERROR" in text and "damaged.txt" in text and f"unmounted {mnt}" in text
        else:
            assert not log_file.exists(), "a quiet run left its log behind"
    finally:
        force_unmount(mnt)
        if log_file.name.endswith(".log"):
            log_file.unlink(missing_ok=True)


def test_foreground_under_systemd_writes_journal_priorities(
    tmp_path: Path, store: Path, mnt: Path, passfile: Path
) -> None:
    """12.14: `-f` with stderr connected to the journal ($JOURNAL_STREAM): `<N>` prefixes."""
    (store / "damaged.txt.age").write_bytes(b"age-encryption.org/v1\n-> garbage\n")
    stderr = tmp_path / "stderr"
    with open(stderr, "wb") as out:
        st = os.fstat(out.fileno())
        env = {**os.environ, "JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
        daemon = subprocess.Popen(
            [sys.executable, "-m", "cagefs", "mount", "-f", store, mnt, "--passfile", passfile],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=out,
            env=env,
        )
    try:
        deadline = time.monotonic() + 60
        while "serving" not in stderr.read_text() and daemon.poll() is None:
            assert time.monotonic() < deadline, stderr.read_text()
            time.sleep(0.05)
        with pytest.raises(OSError):
            (mnt / "damaged.txt").read_bytes()
        umount_cli(mnt)
        assert daemon.wait(60) == 0
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()
        force_unmount(mnt)
    lines = stderr.read_text().splitlines()
    assert lines[0] == f"<6>serving {store} at {mnt} (strategy auto)", lines
    assert any(line.startswith("<3>") and "damaged.txt" in line for line in lines), lines
    assert all(re.match(r"<[0-7]>", line) for line in lines), lines


@pytest.mark.parametrize(
    ("flag", "value", "problem"),
    [
        ("--publish-interval", "-1", "'-1' must be more than 0"),
        ("--publish-interval", "0", "'0' must be more than 0"),
        ("--publish-interval", "inf", "'inf' must be a number of seconds"),
        ("--publish-interval", "1e9", "'1e9' must be more than 0 and at most 86400 seconds"),
        ("--cache-mib", "-1", "'-1' must be a whole number of MiB"),
        ("--cache-mib", "many", "'many' is not a whole number"),
        ("--memory-threshold", "4096T", "'4096T' must be a whole number of bytes"),
        ("--strategy", "fastest", "'fastest' must be one of auto, stream"),
    ],
)
def test_settings_the_config_refuses_are_refused_on_the_command_line(
    store: Path, mnt: Path, passfile: Path, flag: str, value: str, problem: str
) -> None:
    """12.15: the command line and config.toml share one check; a refusal is one line."""
    proc = cagefs("mount", store, mnt, "--passfile", passfile, flag, value)
    assert proc.returncode == 2
    line = one_line(proc.stderr)
    assert line.startswith(f"cagefs mount: argument {flag}: {problem}"), line
    assert_nothing_mounted(mnt)


@pytest.fixture
def read_only_store(tmp_path: Path, store: Path) -> Iterator[Path]:
    """The store seen through a read-only bind mount: nothing can be written under it."""
    view = tmp_path / "ro-view"
    view.mkdir()
    subprocess.run(["mount", "--bind", store, view], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", view], check=True)
        yield view
    finally:
        subprocess.run(["umount", view], check=True)


def test_store_on_a_read_only_filesystem_is_mounted_read_only(
    store: Path, read_only_store: Path, mnt: Path, passfile: Path
) -> None:
    """12.15: it used to mount read-write and lose every edit when the file was closed."""
    with lock_store(store, "test"):  # written before the store became read-only
        pass
    first = subprocess.run(
        [sys.executable, "-m", "cagefs", "mount", store, mnt, "--passfile", passfile],
        capture_output=True,
        text=True,
        check=False,
    )
    assert first.returncode == 0, first.stderr
    (mnt / "kept.txt").write_text("written while writable\n")
    umount_cli(mnt)
    proc = cagefs("mount", read_only_store, mnt, "--passfile", passfile)
    try:
        assert proc.returncode == 0, proc.stderr
        notice = f"{read_only_store} is on a read-only filesystem: mounting read-only"
        assert f"cagefs mount: {notice}\n" in proc.stderr
        assert (mnt / "kept.txt").read_text() == "written while writable\n"
        with pytest.raises(OSError) as caught:
            (mnt / "kept.txt").write_text("an edit that would be lost")
        assert caught.value.errno == errno.EROFS
        umount_cli(mnt)
    finally:
        force_unmount(mnt)


def test_debug_logs_every_request_but_no_data(
    tmp_path: Path, store: Path, mnt: Path, passfile: Path
) -> None:
    """12.15: --debug said "log every request" but sent libfuse's output to /dev/null."""
    log_file = tmp_path / "debug.log"
    args = ("--passfile", passfile, "--debug", "--log", log_file)
    assert cagefs("mount", store, mnt, *args).returncode == 0
    try:
        (mnt / "visible-name.txt").write_bytes(b"SECRET-CONTENT")
        assert (mnt / "visible-name.txt").read_bytes() == b"SECRET-CONTENT"
        umount_cli(mnt)
    finally:
        force_unmount(mnt)
    text = log_file.read_text()
    for request in ("lookup(", "create(", "write(", "release(", "open(", "read("):
        assert f"DEBUG {request}" in text, f"no {request} request in the debug log"
    assert "b'visible-name.txt'" in text
    assert "SECRET-CONTENT" not in text and "<14 bytes>" in text


@pytest.mark.parametrize(
    ("hide", "reason"),
    [
        # no /dev/fuse at all: refused before forking
        ("mount -t tmpfs tmpfs /dev && mknod -m 666 /dev/null c 1 3", "/dev/fuse is missing"),
        # a /dev/fuse that is not FUSE: the daemon's pyfuse3.init fails, the code comes back
        ("mount --bind /dev/null /dev/fuse", "cannot mount on"),
    ],
    ids=["no device", "kernel refuses"],
)
def test_fuse_unavailable_has_its_own_exit_code(
    store: Path, mnt: Path, passfile: Path, hide: str, reason: str
) -> None:
    """In a private mount namespace, so that only this command loses FUSE."""
    command = f"{hide} && exec {sys.executable} -m cagefs mount {store} {mnt} --passfile {passfile}"
    proc = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", command],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    fallback_log_file(str(mnt)).unlink(missing_ok=True)  # the daemon logged its error there
    assert proc.returncode == ExitCode.NO_FUSE, proc.stderr
    assert reason in one_line(proc.stderr)
    assert_nothing_mounted(mnt)


@pytest.mark.usefixtures("reap")
def test_background_passes_the_childs_exit_code() -> None:
    def fail(ready: object) -> None:
        raise StoreBusy(Path("/s"), "/m", 42)

    with pytest.raises(CageError) as caught:
        run_in_background(fail)
    assert caught.value.exit_code == ExitCode.STORE_BUSY
    assert str(caught.value) == "/s is in use: mounted on /m by pid 42"


def test_version() -> None:
    with open(Path(__file__).resolve().parent.parent / "pyproject.toml", "rb") as f:
        version = tomllib.load(f)["project"]["version"]
    proc = cagefs("--version")
    assert (proc.returncode, proc.stdout) == (0, f"cagefs {version}\n")


@pytest.mark.parametrize(
    ("text", "seconds"), [("90", 90.0), ("90s", 90.0), ("30m", 1800.0), ("2h", 7200.0)]
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds
    assert parse_mount_options([f"idle={text}"], CONVERTERS).values == {"idle": seconds}


@pytest.mark.parametrize("text", ["0", "-1s", "soon", "5 weeks"])
def test_parse_duration_refuses_nonsense(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        parse_duration(text)
