"""What every benchmark shares: commands, caches, the targets it mounts, memory sampling, and the
`Workload` a measurement module implements to join `python -m bench`.

A target is a directory to run workloads in: the plain backing directory, a gocryptfs mount or a
cagefs mount (one per strategy). Each (round, workload, target) gets a fresh mount, so that mount
time, memory and caches are the workload's own. Commands run with their output captured; one
that fails raises `RuntimeError` with its stderr, and the suite records it against the target.
"""

import argparse
import contextlib
import os
import resource
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

MIB = 1 << 20
MB = 1_000_000
RESULTS_DIR = Path(__file__).resolve().parent / "results"
STRATEGIES = ("auto", "stream", "memory", "tempfile")
PASSWORD_CMD = "echo bench-password"  # gocryptfs -extpass: a throwaway volume
STOP_TIMEOUT = 300.0
RSS_EVERY = 0.05  # seconds between samples of a daemon's memory


# ---------------------------------------------------------------- standalone benchmarks


def standalone_parser(description: str, size_help: str, quick_help: str) -> argparse.ArgumentParser:
    """The options the standalone benchmarks (`python -m bench.NAME`) share; `--quick` sets
    nothing here: each sets its own smoke-test sizes after parsing."""
    parser = argparse.ArgumentParser(description=description.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024, help=size_help)
    parser.add_argument("--repeat", type=int, default=3, help="rounds (the median counts)")
    parser.add_argument("--dir", type=Path, default=Path("/var/tmp"), help="where scratch goes")
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    parser.add_argument("--quick", action="store_true", help=quick_help)
    return parser


# ---------------------------------------------------------------- commands and caches


def run(cmd: list[str], **kwargs: object) -> subprocess.CompletedProcess:
    """Run `cmd` (stdout captured unless `stdout=` says otherwise); raise with its stderr."""
    kwargs.setdefault("stdout", subprocess.PIPE)
    done = subprocess.run(cmd, stderr=subprocess.PIPE, text=True, check=False, **kwargs)  # type: ignore[call-overload]
    if done.returncode != 0:
        raise RuntimeError(f"{shlex.join(cmd)}: {done.stderr.strip()[-2000:]}")
    return done


def timed(cmd: list[str], **kwargs: object) -> float:
    start = time.perf_counter()
    run(cmd, **kwargs)
    return time.perf_counter() - start


def drop_caches() -> None:
    """Write back everything, then drop the page, dentry and inode caches of every filesystem."""
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def cpu_seconds(servers: list[int], own: bool = False) -> float:
    """CPU time (user + system) used so far by the processes serving a mount and everything
    below them, by this process's waited-for children (dd, fio, age), and with `own` by this
    process too. Unlike the whole machine's CPU time, it leaves out what other work on a shared
    host spends meanwhile; kernel threads (writeback) are left out as well."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    total = children.ru_utime + children.ru_stime
    if own:
        mine = resource.getrusage(resource.RUSAGE_SELF)
        total += mine.ru_utime + mine.ru_stime
    return total + server_cpu_seconds(servers)


def server_cpu_seconds(servers: list[int]) -> float:
    """CPU time (user + system) used so far by `servers` and every process below them."""
    total, tick = 0.0, os.sysconf("SC_CLK_TCK")
    for pid in with_descendants(servers) if servers else []:
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
    return total


def tree_bytes(root: Path) -> int:
    """Apparent size of every file under `root`."""
    return sum(
        os.lstat(os.path.join(top, name)).st_size
        for top, _dirs, files in os.walk(root)
        for name in files
    )


# ---------------------------------------------------------------- mounts


def cagefs_cli(*args: object) -> list[str]:
    return [sys.executable, "-m", "cagefs", *map(str, args)]


def mounts_under(root: Path) -> list[Path]:
    with open("/proc/mounts") as f:
        points = [Path(line.split()[1]) for line in f]
    return [p for p in points if p.is_relative_to(root)]


def is_mounted(path: Path) -> bool:
    return path in mounts_under(path)


def unmount(mnt: Path, command: list[str]) -> None:
    """Unmount with `command`; if that fails, detach lazily so nothing is left behind."""
    if not is_mounted(mnt):
        return
    done = subprocess.run(command, capture_output=True, timeout=STOP_TIMEOUT, check=False)
    if done.returncode != 0 or is_mounted(mnt):
        subprocess.run(["fusermount3", "-u", "-z", str(mnt)], capture_output=True, check=False)


def fuse_servers(mnt: Path) -> list[int]:
    """Pids of the processes serving `mnt`: they hold /dev/fuse open and name `mnt` in argv."""
    pids = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            argv = Path(entry.path, "cmdline").read_bytes().split(b"\0")
            if os.fsencode(mnt) not in argv:
                continue
            fds = os.listdir(f"{entry.path}/fd")
            if any(os.readlink(f"{entry.path}/fd/{fd}") == "/dev/fuse" for fd in fds):
                pids.append(int(entry.name))
        except OSError:  # gone, or a kernel thread
            continue
    return pids


def with_descendants(roots: list[int]) -> list[int]:
    """`roots` and every process below them (cagefs's sealer processes)."""
    parents: dict[int, int] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                stat = Path(entry.path, "stat").read_text()
                parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, frontier = set(roots), list(roots)
    while frontier:
        parent = frontier.pop()
        children = [pid for pid, ppid in parents.items() if ppid == parent and pid not in found]
        found.update(children)
        frontier += children
    return sorted(found)


def bytes_written(servers: list[int]) -> int:
    """Bytes sent to storage so far (`write_bytes` of /proc/PID/io) by `servers` and the
    processes below them, and by this process (which writes a plain directory itself)."""
    total = 0
    for pid in [*with_descendants(servers), os.getpid()] if servers else [os.getpid()]:
        with contextlib.suppress(OSError, ValueError):
            for line in Path(f"/proc/{pid}/io").read_text().splitlines():
                if line.startswith("write_bytes:"):
                    total += int(line.split()[1])
    return total


def memory_bytes(pids: list[int]) -> int:
    """The processes' summed proportional set size: resident memory, with each page shared
    between them (cagefs's sealer rings are mapped by the daemon and a sealer) counted once."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1]) * 1024
    return total


class RssPeak:
    """Samples the memory (`memory_bytes`) of a daemon and its children on a thread; `peak`
    is the largest sum seen. Children are looked up again every tenth sample."""

    def __init__(self, roots: list[int]) -> None:
        self._roots = roots
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.peak = 0

    def __enter__(self) -> "RssPeak":
        if self._roots:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._roots:
            self._thread.join()

    def _run(self) -> None:
        pids, sample = self._roots, 0
        while True:
            if sample % 10 == 0:
                pids = with_descendants(self._roots)
            self.peak = max(self.peak, memory_bytes(pids))
            sample += 1
            if self._stop.wait(RSS_EVERY):
                return


@dataclass
class Work:
    """The run's scratch directory and the key shared by cagefs stores and age."""

    root: Path
    identity: Path
    recipient: str

    def scratch(self, name: str) -> Path:
        """A fresh directory on the scratch filesystem (where the plain target lives too)."""
        path = self.root / name
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir()
        return path


@contextlib.contextmanager
def work_dir(parent: Path) -> Iterator[Work]:
    """A scratch directory with an age key; removed at the end, every mount in it first."""
    root = Path(tempfile.mkdtemp(prefix="cagefs-bench-", dir=parent))
    try:
        identity = root / "identity.txt"
        run(["age-keygen", "-o", str(identity)])
        recipient = run(["age-keygen", "-y", str(identity)]).stdout.strip()
        yield Work(root, identity, recipient)
    finally:
        for mnt in mounts_under(root):  # never let rmtree reach into a live mount
            unmount(mnt, ["fusermount3", "-u", "-z", str(mnt)])
        shutil.rmtree(root, ignore_errors=True)


@dataclass
class Mounted:
    """A target ready for a workload: where to work, where its files land, who serves it."""

    path: Path
    backing: Path
    servers: list[int] = field(default_factory=list)
    mount_seconds: float | None = None


@dataclass
class Target:
    key: str
    label: str
    mount: Callable[[Work], contextlib.AbstractContextManager[Mounted]]
    kind: str  # "plain", "gocryptfs" or "cagefs": what ratios are taken between


@contextlib.contextmanager
def plain_dir(work: Work) -> Iterator[Mounted]:
    path = work.scratch("plain")
    try:
        yield Mounted(path, path)
    finally:
        shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def gocryptfs_mount(work: Work) -> Iterator[Mounted]:
    cipher, mnt = work.scratch("gocryptfs-cipher"), work.root / "gocryptfs-mnt"
    mnt.mkdir(exist_ok=True)
    run(["gocryptfs", "-q", "-init", "-extpass", PASSWORD_CMD, "-scryptn", "10", str(cipher)])
    try:
        seconds = timed(["gocryptfs", "-q", "-extpass", PASSWORD_CMD, str(cipher), str(mnt)])
        yield Mounted(mnt, cipher, fuse_servers(mnt), seconds)
    finally:
        unmount(mnt, ["fusermount3", "-u", str(mnt)])
        shutil.rmtree(cipher, ignore_errors=True)


def cagefs_mount(
    strategy: str, extra: Callable[[], list[str]] = list
) -> Callable[[Work], contextlib.AbstractContextManager[Mounted]]:
    """A fresh store mounted with `strategy` (and `extra()` options); unmounted at the end
    (pending writes published). A traceback in the daemon's log fails the workload."""

    @contextlib.contextmanager
    def mount(work: Work) -> Iterator[Mounted]:
        store, mnt = work.root / f"store-{strategy}", work.root / "mnt"
        log = work.root / "cagefs.log"
        shutil.rmtree(store, ignore_errors=True)
        mnt.mkdir(exist_ok=True)
        run(cagefs_cli("init", store, "--identity", work.identity))
        text = ""
        try:
            options = ["-i", work.identity, "--strategy", strategy, "--log", log, *extra()]
            seconds = timed(cagefs_cli("mount", store, mnt, *options))
            yield Mounted(mnt, store, fuse_servers(mnt), seconds)
        finally:
            unmount(mnt, cagefs_cli("umount", mnt))
            text = log.read_text(errors="replace") if log.exists() else ""
            log.unlink(missing_ok=True)
            shutil.rmtree(store, ignore_errors=True)
        if "Traceback" in text:
            raise RuntimeError(f"the cagefs daemon logged a traceback:\n{text[-3000:]}")

    return mount


def targets(strategies: list[str], memory_threshold: Callable[[], list[str]]) -> list[Target]:
    """The references, then cagefs with each strategy. `memory` is given `memory_threshold()`
    so that it stages in RAM files the size a workload writes (the threshold only steers auto)."""
    return [
        Target("plain", "plain backing directory", plain_dir, "plain"),
        Target("gocryptfs", "gocryptfs (-scryptn 10)", gocryptfs_mount, "gocryptfs"),
        *(
            Target(
                f"cagefs-{s}",
                f"cagefs --strategy {s}",
                cagefs_mount(s, memory_threshold if s == "memory" else list),
                "cagefs",
            )
            for s in strategies
        ),
    ]


# ---------------------------------------------------------------- workloads


@dataclass(frozen=True)
class Metric:
    """One figure a workload reports; `lower_is_better` for times and latencies."""

    key: str
    label: str
    unit: str
    lower_is_better: bool = False


@dataclass
class Settings:
    """Sizes for one run (the defaults, or `--quick`'s)."""

    quick: bool
    seq_mib: int
    fio_mib: int
    fio_runtime: int | None  # None: the job files' own runtime
    files: int
    sqlite_mib: int
    transactions: int
    sqlite_seconds: float  # per mode: stop early, counting what committed, once this is spent
    append_mib: int = 1024  # the file `append` adds lines to
    appends: int = 100


class Workload:
    """One kind of measurement. `prepare` runs once per invocation (inputs in scratch);
    `measure` runs once per round in each target's directory and returns its figures;
    `references` may add columns that are not a mounted directory (the crypto ceiling)."""

    name = ""
    title = ""
    reference_labels: dict[str, str] = {}  # noqa: RUF012 - read-only, overridden per class

    def prepare(self, work: Work, settings: Settings) -> None:
        return None

    def measure(self, target: Mounted, settings: Settings) -> dict[Metric, float]:
        raise NotImplementedError

    def references(self, work: Work, settings: Settings) -> dict[str, dict[Metric, float]]:
        return {}
