"""Drive a real `cagefs mount -f` daemon from tests, and check its store against the mount.

The checks use only outside tools as references: the Go `age` CLI decrypts backing files, a plain
directory is the model of POSIX behaviour, /proc tells whether something is mounted.
"""

import contextlib
import errno
import hashlib
import os
import re
import select
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

STRATEGIES = ("stream", "memory", "tempfile", "auto")
SUFFIX = ".age"
META = ".cagefs"
CHUNK = 64 * 1024
CHUNK_CT = CHUNK + 16
READY_TIMEOUT = 30.0
NOTIFY_GRACE = 5.0
STOP_TIMEOUT = 120.0
CHILD_EXIT_TIMEOUT = 10.0
BLOCK = 1 << 20


class DaemonExited(Exception):
    """The daemon ended before the mount was ready; carries its exit code and log."""

    def __init__(self, rc: int, log: str) -> None:
        super().__init__(f"cagefs mount exited with {rc} before it was ready:\n{log[-4000:]}")
        self.rc = rc
        self.log = log


def cagefs(*args: object, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run the cagefs CLI as a user would (a fresh interpreter), capturing its output."""
    return subprocess.run(
        [sys.executable, "-m", "cagefs", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )


def run(*cmd: object, cwd: Path | None = None, input: bytes | None = None) -> bytes:
    """Run a tool and return its stdout; a failure shows the tool's stderr in the test report."""
    proc = subprocess.run(
        [str(c) for c in cmd], cwd=cwd, input=input, capture_output=True, timeout=600, check=False
    )
    out = (proc.stdout[-1000:] + proc.stderr[-2000:]).decode(errors="replace")
    assert proc.returncode == 0, f"{cmd} exited {proc.returncode}: {out}"
    return proc.stdout


def sh(script: str, cwd: Path) -> bytes:
    """Run a shell snippet (for redirections like `>>`)."""
    return run("bash", "-euo", "pipefail", "-c", script, cwd=cwd)


def mountpoints() -> dict[str, str]:
    """Mount point → filesystem type, from /proc/mounts (paths here never contain spaces)."""
    with open("/proc/mounts") as f:
        return {fields[1]: fields[2] for fields in (line.split() for line in f)}


def is_mounted(path: Path) -> bool:
    return str(path) in mountpoints()


def force_unmount(mnt: Path) -> None:
    """Detach mnt whatever state its daemon is in. A connection nobody serves any more is
    aborted first (fusectl), so that nothing stays blocked on it; lazy only as the last resort."""
    for step in ("-u", "abort", "-u", "-z"):
        if not is_mounted(mnt):
            return
        if step == "abort":
            abort_connection(mnt)
        else:
            args = ["-u", "-z"] if step == "-z" else ["-u"]
            subprocess.run(["fusermount3", *args, str(mnt)], capture_output=True, timeout=60)


def abort_connection(mnt: Path) -> None:
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            if fields[4] == str(mnt):
                abort = Path(f"/sys/fs/fuse/connections/{fields[2].split(':')[1]}/abort")
                if abort.exists():
                    abort.write_text("1")


def one_line(text: str) -> str:
    """The single line a failing command must print; fails if it printed more or nothing."""
    lines = text.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got:\n{text}"
    assert "Traceback" not in text
    return lines[0]


@dataclass
class Daemon:
    """One `cagefs mount -f` process; starts, stops and dies only as the test says."""

    store: Path
    mnt: Path
    identity: Path
    log: Path
    strategy: str | None = None
    options: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen | None = None
    mounted_once: bool = False
    children: set[int] = field(default_factory=set)  # its sealer processes, seen at stop

    @property
    def pid(self) -> int:
        assert self.proc is not None, "daemon not running"
        return self.proc.pid

    def command(self) -> list[str]:
        cmd = [sys.executable, "-m", "cagefs", "mount", str(self.store), str(self.mnt)]
        cmd += ["-i", str(self.identity), "-f", *self.options]
        if self.strategy:
            cmd += ["--strategy", self.strategy]
        return cmd

    def start(self) -> None:
        """Start and return once the mount is usable (READY=1, or seen in /proc/mounts)."""
        sockdir = tempfile.mkdtemp(prefix="cagefs-notify-")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            sock.bind(f"{sockdir}/s")
            env = {k: v for k, v in os.environ.items() if k != "CAGEFS_STRATEGY"}
            env.update(self.env, NOTIFY_SOCKET=f"{sockdir}/s")
            with open(self.log, "ab") as log:
                self.proc = subprocess.Popen(
                    self.command(),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=log,
                    env=env,
                    start_new_session=True,
                )
            self.wait_ready(sock)
        finally:
            sock.close()
            shutil.rmtree(sockdir)

    def wait_ready(self, sock: socket.socket) -> None:
        """READY=1 on the notify socket; a mount in /proc/mounts counts only if no READY came
        within NOTIFY_GRACE after it appeared (a daemon that does not notify)."""
        assert self.proc is not None
        deadline = time.monotonic() + READY_TIMEOUT
        seen_mounted = None
        while time.monotonic() < deadline:
            rc = self.proc.poll()
            if rc is not None:
                self.proc = None
                raise DaemonExited(rc, self.log_text())
            readable, _, _ = select.select([sock], [], [], 0.1)
            if readable and b"READY=1" in sock.recv(4096).split(b"\n"):
                self.mounted_once = True
                return
            if seen_mounted is None and is_mounted(self.mnt):
                seen_mounted = time.monotonic()
            if seen_mounted is not None and time.monotonic() - seen_mounted > NOTIFY_GRACE:
                self.mounted_once = True
                return
        self.proc.kill()
        self.proc.wait(STOP_TIMEOUT)
        self.proc = None
        force_unmount(self.mnt)
        raise AssertionError(f"mount not ready after {READY_TIMEOUT}s:\n{self.log_text()[-4000:]}")

    def stop(self) -> int:
        """SIGTERM: the daemon must publish pending writes, unmount and exit; returns its code."""
        assert self.proc is not None, "daemon not running"
        self.children |= child_pids(self.pid)
        self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.kill9()
            raise AssertionError("daemon did not exit within its stop timeout") from None
        self.proc = None
        return rc

    def stop_clean(self) -> None:
        rc = self.stop()
        assert rc == 0, f"daemon exited {rc} on SIGTERM:\n{self.log_text()[-4000:]}"
        assert not is_mounted(self.mnt), "daemon exited on SIGTERM but left the mount behind"

    def remount(self) -> None:
        self.stop_clean()
        self.start()

    def kill9(self) -> None:
        """Kill the daemon as a crash would, then detach the dead mount as an admin would."""
        assert self.proc is not None, "daemon not running"
        self.children |= child_pids(self.pid)
        self.proc.kill()
        self.proc.wait(STOP_TIMEOUT)
        self.proc = None
        force_unmount(self.mnt)

    def close(self) -> list[str]:
        """Teardown: always leave nothing mounted and nothing running; return the problems."""
        problems: list[str] = []
        if not self.mounted_once:  # never ready: the mount point may be another daemon's
            return problems
        if self.proc is not None:
            try:
                rc = self.stop()
                if rc != 0:
                    problems.append(f"daemon exited {rc} on SIGTERM at teardown")
            except AssertionError as exc:
                problems.append(str(exc))
        if is_mounted(self.mnt):
            problems.append("mount still present after the daemon stopped")
        force_unmount(self.mnt)
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(STOP_TIMEOUT)
        if "Traceback" in self.log_text():
            problems.append(f"traceback in the daemon log {self.log}")
        outlived = still_running(self.children, CHILD_EXIT_TIMEOUT)
        if outlived:
            problems.append(f"processes of the daemon outlived it: {sorted(outlived)}")
            for pid in outlived:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        return problems

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def assert_store_matches(self, remount: bool = False, foreign: frozenset[str] = frozenset()):
        assert_store_matches(self.mnt, self.store, self.identity, self.stop_clean, foreign)
        if remount:
            self.start()


# --- the mount's view and the store's view -------------------------------------------------


def deleted_store_files_held(daemon: Daemon) -> list[str]:
    """Files under the store that the daemon or its sealers still hold after their last name
    went: each one's blocks are not yet given back. (Versions made ahead, which never had a
    name, show as `.cagefs/tmp/#INODE`: not those.)"""
    unnamed = f"{daemon.store}/{META}/tmp/#"
    held = []
    for pid in {daemon.pid, *child_pids(daemon.pid)}:
        for fd in Path(f"/proc/{pid}/fd").glob("*"):
            with contextlib.suppress(OSError):
                target = os.readlink(fd)
                if target.startswith(unnamed):
                    continue
                if target.startswith(str(daemon.store)) and target.endswith(" (deleted)"):
                    held.append(target)
    return held


def child_pids(pid: int) -> set[int]:
    """The processes `pid` started that are still its children (its sealers)."""
    pids: set[int] = set()
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            pids.update(int(child) for child in (task / "children").read_text().split())
    return pids


def resident_in(pid: int, names: tuple[str, ...]) -> int:
    """Bytes resident in `pid`'s mappings whose name starts with one of `names` (a sealer's
    ring is `/memfd:cagefs-ring`, an anonymous shared buffer `/dev/zero`); 0 once it exited."""
    total, counted = 0, False
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
            fields = line.split()
            if "-" in fields[0] and ":" not in fields[0]:  # a mapping's first line
                counted = len(fields) > 5 and fields[5].startswith(names)
            elif counted and fields[0] == "Rss:":
                total += int(fields[1]) << 10
    return total


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    """Until `condition()` holds; the timeout only guards against a hang."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"still not so after {timeout:.0f} s: {what}"
        time.sleep(0.05)


def still_running(pids: set[int], timeout: float) -> set[int]:
    """Those of `pids` that have not exited within `timeout` (zombies count as exited)."""
    deadline = time.monotonic() + timeout
    while True:
        alive = {pid for pid in pids if _running(pid)}
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.05)


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def file_digest(path: Path) -> tuple[int, str]:
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while block := f.read(BLOCK):
            h.update(block)
            size += len(block)
    return size, h.hexdigest()


def age_decrypt_cmd(path: Path, identity: Path) -> list[str]:
    return ["age", "-d", "-i", str(identity), str(path)]


def decrypt_backing(path: Path, identity: Path) -> bytes:
    """The plaintext of a backing file, as the Go age CLI reads it (fails the test if it can't)."""
    proc = subprocess.run(age_decrypt_cmd(path, identity), capture_output=True, timeout=600)
    assert proc.returncode == 0, f"age -d {path}: {proc.stderr.decode().strip()}"
    return proc.stdout


def backing_digest(path: Path, identity: Path) -> tuple[int, str]:
    """Like decrypt_backing, but streamed: usable on files of any size."""
    h = hashlib.sha256()
    size = 0
    with subprocess.Popen(
        age_decrypt_cmd(path, identity), stdout=subprocess.PIPE, stderr=subprocess.PIPE
    ) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        while block := proc.stdout.read(BLOCK):
            h.update(block)
            size += len(block)
        err = proc.stderr.read().decode().strip()
    assert proc.returncode == 0, f"age -d {path}: {err}"
    return size, h.hexdigest()


Entry = tuple


def walk(root: Path, skip: Callable[[str, os.DirEntry], bool] = lambda rel, e: False):
    """Every entry under root as (relative path, DirEntry), not following symlinks."""
    stack = [("", root)]
    while stack:
        rel, path = stack.pop()
        for entry in sorted(os.scandir(path), key=lambda e: e.name):
            name = f"{rel}{entry.name}"
            if skip(name, entry):
                continue
            yield name, entry
            if entry.is_dir(follow_symlinks=False):
                stack.append((f"{name}/", Path(entry.path)))


def tree(root: Path, modes: bool = False) -> dict[str, Entry]:
    """What a directory shows: files by size and digest, symlinks by target, directories."""
    out: dict[str, Entry] = {}
    for name, entry in walk(root):
        mode = (entry.stat(follow_symlinks=False).st_mode & 0o7777,) if modes else ()
        if entry.is_symlink():
            out[name] = ("link", os.readlink(entry.path))
        elif entry.is_dir(follow_symlinks=False):
            out[name] = ("dir", *mode)
        elif not entry.is_file(follow_symlinks=False):
            out[name] = special(entry)
        else:
            out[name] = ("file", *file_digest(Path(entry.path)), *mode)
    return out


def special(entry: os.DirEntry) -> Entry:
    """A FIFO, socket or device, by type and device number (it holds no data)."""
    st = entry.stat(follow_symlinks=False)
    return ("special", stat.S_IFMT(st.st_mode), st.st_rdev)


def backing_tree(store: Path, identity: Path, foreign: frozenset[str] = frozenset()):
    """What the store should show through a mount, decrypting every backing file with `age -d`."""
    out: dict[str, Entry] = {}
    unexpected = []

    def skip(rel: str, entry: os.DirEntry) -> bool:
        return rel == META or rel in foreign

    backing: dict[str, Path] = {}
    for name, entry in walk(store, skip):
        if entry.is_symlink():
            out[name] = ("link", os.readlink(entry.path))
        elif entry.is_dir(follow_symlinks=False):
            out[name] = ("dir",)
        elif not entry.is_file(follow_symlinks=False):
            out[name] = special(entry)
        elif name.endswith(SUFFIX):
            backing[name[: -len(SUFFIX)]] = Path(entry.path)
        else:
            unexpected.append(name)
    assert not unexpected, f"files in the store that cagefs did not write: {unexpected}"
    with ThreadPoolExecutor(os.cpu_count()) as pool:  # one `age -d` process per file
        digests = pool.map(lambda path: backing_digest(path, identity), backing.values())
        out |= {name: ("file", *digest) for name, digest in zip(backing, digests, strict=True)}
    return out


def assert_same_tree(got: dict[str, Entry], want: dict[str, Entry], what: str) -> None:
    missing = sorted(set(want) - set(got))
    extra = sorted(set(got) - set(want))
    differ = sorted(k for k in set(got) & set(want) if got[k] != want[k])
    assert not (missing or extra or differ), (
        f"{what}: missing {missing[:20]}, extra {extra[:20]}, "
        f"different {[(k, got[k], want[k]) for k in differ[:10]]}"
    )


def assert_store_matches(
    mnt: Path,
    store: Path,
    identity: Path,
    unmount: Callable[[], None] | None = None,
    foreign: frozenset[str] = frozenset(),
) -> None:
    """I4 and I3: after a clean unmount every backing file decrypts with `age -d` to exactly
    what the mount showed, and no version is left in `.cagefs/tmp`.

    The comparison happens after the unmount because closed files may be published in groups;
    the clean unmount is what promises that everything is published.
    """
    view = tree(mnt)
    (unmount or (lambda: umount_cli(mnt)))()
    assert_same_tree(backing_tree(store, identity, foreign), view, "store vs mount")
    left = os.listdir(store / META / "tmp")
    assert not left, f"temp versions left in {META}/tmp after unmount: {left}"


def umount_cli(mnt: Path) -> None:
    """`cagefs umount MNT`; returns once the mount is gone."""
    proc = cagefs("umount", mnt)
    assert proc.returncode == 0, f"cagefs umount: {proc.stderr}"
    assert not is_mounted(mnt)


# --- content generation and search ----------------------------------------------------------


def make_tree(root: Path, rng, big: int = 3 << 20) -> None:
    """A tree like a real one: nested directories, several sizes around the 64 KiB chunk
    size, empty files, a few MiB file, relative/absolute/dangling symlinks, odd modes."""
    (root / "a" / "b" / "c").mkdir(parents=True)
    (root / "empty-dir").mkdir()
    sizes = {"one": 1, "chunk": CHUNK, "chunk+1": CHUNK + 1, "two-chunks-1": 2 * CHUNK - 1}
    sizes |= {"small.txt": 100, "a/b/c/deep.bin": 300_000, "a/big.bin": big, "a/b/empty": 0}
    for name, size in sizes.items():
        (root / name).write_bytes(rng.randbytes(size))
    (root / "empty").write_bytes(b"")
    (root / "a" / "script.sh").write_text("#!/bin/sh\necho hi\n")
    (root / "a" / "script.sh").chmod(0o755)
    (root / "small.txt").chmod(0o600)
    os.symlink("a/b/c/deep.bin", root / "rel-link")
    os.symlink("/etc/hostname", root / "abs-link")
    os.symlink("does/not/exist", root / "a" / "dangling")
    os.symlink("b", root / "a" / "dir-link")


def find_marker(
    roots: list[Path], marker: bytes, skip: list[Path], since: float | None = None
) -> list[str]:
    """Files under roots whose bytes contain marker. Never looks into a FUSE mount (not even
    a stat of its root, which blocks if its daemon is stuck), stays on each root's
    filesystem, and never enters the skipped directories. With `since`, files whose inode
    last changed before it are not read: a fresh marker cannot be in them, and ctime, unlike
    mtime, cannot be set back."""
    skipped = {str(p) for p in skip}
    skipped |= {path for path, kind in mountpoints().items() if kind.startswith("fuse")}
    found = []
    for root in roots:
        dev = os.lstat(root).st_dev
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = [d for d in dirnames if f"{dirpath}/{d}" not in skipped]
            for name in filenames:
                path = f"{dirpath}/{name}"
                if recent_file(path, dev, since) and file_contains(path, marker):
                    found.append(path)
    return found


def recent_file(path: str, dev: int, since: float | None) -> bool:
    try:
        st = os.lstat(path)
    except OSError:
        return False
    fresh = since is None or st.st_ctime >= since
    return stat.S_ISREG(st.st_mode) and st.st_dev == dev and fresh


def file_contains(path: str, marker: bytes) -> bool:
    try:
        with open(path, "rb") as f:
            tail = b""
            while block := f.read(BLOCK):
                if marker in tail + block:
                    return True
                tail = block[-len(marker) :]
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.EACCES, errno.ENXIO, errno.EPERM):
            return False
        raise
    return False


@contextlib.contextmanager
def opened(path: Path, flags: int, mode: int = 0o644) -> Iterator[int]:
    fd = os.open(path, flags, mode)
    try:
        yield fd
    finally:
        os.close(fd)


def read_all(fd: int) -> bytes:
    """The whole content behind fd, read with pread so the file offset does not matter."""
    out = []
    off = 0
    while block := os.pread(fd, BLOCK, off):
        out.append(block)
        off += len(block)
    return b"".join(out)


def records(store: Path) -> list[Path]:
    """Record files and slots holding a record (docs/JOURNAL.md: a slot whose first 512 bytes
    are zeros holds none)."""
    journal = store / META / "journal"
    found = sorted(journal.iterdir()) if journal.exists() else []
    return [p for p in found if not p.name.startswith("slot-") or not free_slot(_first_sector(p))]


def _first_sector(path: Path) -> bytes:
    """All `free_slot` looks at: a slot is up to 1 MiB, and callers poll the whole journal."""
    with path.open("rb") as file:
        return file.read(512)


def free_slot(content: bytes) -> bool:
    """A slot's bytes hold no record: its first 512 bytes are zeros (docs/JOURNAL.md)."""
    return not content[:512].strip(b"\0")



def refused_for_damage(daemon: Daemon, record: Path) -> None:
    """Starting `daemon` fails with exit 8 and a last log line (the log has the earlier mounts
    too) that names `record` as damaged, with no traceback."""
    try:
        daemon.start()
    except DaemonExited as refused:
        line = refused.log.strip().splitlines()[-1]
        assert refused.rc == 8, f"exit {refused.rc}: {line}"
        assert line.startswith("cagefs mount: "), line
        assert record.name in line and "damaged" in line, line
        assert "Traceback" not in refused.log
    else:
        raise AssertionError(f"the mount started over the damaged {record.name}")


TRACED_CALL = re.compile(r"^(\d+) +(\w+)\((.*)$", re.MULTILINE)


@contextlib.contextmanager
def traced(pid: int, syscalls: str) -> Iterator[list[tuple[int, str, str]]]:
    """The calls among `syscalls` (strace's -e trace= list) that the process `pid` makes in
    the block, from every thread, as (thread id, call, its arguments with descriptors shown
    as their paths), seen by `strace -f -y`; filled at the end of the block."""
    calls: list[tuple[int, str, str]] = []
    with tempfile.TemporaryDirectory(prefix="cagefs-strace-") as scratch:
        out = Path(scratch) / "trace"
        tracer = subprocess.Popen(
            ["strace", "-f", "-qq", "-y", "-e", f"trace={syscalls}", "-p", str(pid),
             "-o", str(out)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + READY_TIMEOUT
            while not _all_traced(pid):
                assert tracer.poll() is None, "strace exited"
                assert time.monotonic() < deadline, "strace did not attach"
                time.sleep(0.01)
            yield calls
        finally:
            tracer.send_signal(signal.SIGINT)
            tracer.wait(STOP_TIMEOUT)
        text = out.read_text()
    calls += [(int(tid), call, args) for tid, call, args in TRACED_CALL.findall(text)]


@contextlib.contextmanager
def syncs_of(pid: int) -> Iterator[list[tuple[str, str]]]:
    """The fsync, fdatasync and syncfs calls the process `pid` makes in the block, as (call,
    path of the descriptor); filled at the end of the block."""
    syncs: list[tuple[str, str]] = []
    with traced(pid, "fsync,fdatasync,syncfs") as calls:
        yield syncs
    syncs += [(call, args[args.index("<") + 1 : args.index(">")]) for _, call, args in calls]


def _all_traced(pid: int) -> bool:
    """Every thread of `pid` has a tracer."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(FileNotFoundError):
            status = (task / "status").read_text()
            if "\nTracerPid:\t0\n" in status:
                return False
    return True
