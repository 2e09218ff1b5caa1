"""Crash soak: `kill -9` the daemon many times in the middle of writes, then check every file.

    PYTHONPATH=. .venv/bin/python scripts/crash_soak.py [--rounds 100] [--strategies auto,...]

Round r mounts the store with strategy r mod 4 (stream, memory, tempfile, auto), starts writer
processes, kills the daemon with SIGKILL at a random moment, and remounts. After every remount:

- every file shows exactly one state some writer intended: a complete earlier version, or the
  content as of a completed fsync or of its last close. A writer records each state it intends
  (on a plain disk, before it starts the operation) so the allowed states per file are known;
  anything else is a torn file. A state older than one whose fsync returned is a lost fsync.
- every backing file decrypts with the Go `age -d` and matches what the mount shows;
- no temp version is left in the store or visible in the mount.

The workloads are the ones that tear files when a `flush` publishes: shell writers whose child
processes hold the fd (`exec 3>f; cat a >&3; /bin/true; sleep; cat b >&3`), in-place edits
(`exec 3<>f`), appends (`exec 3>>f`), Python dup/fork/exec of a writer's fd with pwrite in the
middle of a file, fsync halfway and at the end, writes without fsync, and write-then-rename.
It prints rounds, files checked and torn files per strategy, and exits 1 if anything was wrong.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ["PYTHONPATH"] = os.pathsep.join(  # the daemons run this checkout's cagefs
    [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]
)

from tests.mount.helpers import (  # noqa: E402
    META,
    STRATEGIES,
    SUFFIX,
    Daemon,
    cagefs,
    decrypt_backing,
    still_running,
)

SOAK = "soak"  # the directory in the mount the writers work in
FILES_PER_WRITER = 5
PART_SIZES = (1, 100, 4096, 65535, 65536, 65537, 200_000)
ABSENT = ".absent"
FSYNCED = ".fsynced"
OPS = (
    "shell_new",
    "shell_inplace",
    "shell_append",
    "py_fork_trunc",
    "py_fork_pwrite",
    "rename",
    "plain",
)

# A shell writer whose children (cat, /bin/true, sleep) hold its fd 3 and close their copies
# while it still writes: every such close is a FUSE flush.
SHELL = 'exec 3{redir}"$F"; cat "$P1" >&3; /bin/true; sleep "$S"; cat "$P2" >&3; exec 3>&-'
REDIRS = {"shell_new": ">", "shell_inplace": "<>", "shell_append": ">>"}


# --- the writer (a separate process, killed together with the daemon) ----------------------


class States:
    """The states a writer intends per file, kept on a plain disk under `expect/NAME/`:
    `VERSION` holds a content, `VERSION.absent` means no file, `VERSION.fsynced` marks a
    version whose fsync (or directory fsync after a rename) returned."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def versions(self, name: str) -> dict[int, bytes | None]:
        out: dict[int, bytes | None] = {}
        for path in (self.root / name).iterdir():
            stem, _, kind = path.name.partition(".")
            if not kind:
                out[int(stem)] = path.read_bytes()
            elif f".{kind}" == ABSENT:
                out[int(stem)] = None
        return out

    def fsynced(self, name: str) -> int:
        marks = [int(p.name.split(".")[0]) for p in (self.root / name).glob(f"*{FSYNCED}")]
        return max(marks, default=-1)

    def intend(self, name: str, content: bytes | None, op: str = "baseline") -> int:
        """Record a state (and the operation that makes it) before any byte of it reaches the
        mount; returns its version."""
        v = max(self.versions(name), default=-1) + 1
        path = self.root / name / f"{v:06d}"
        path.with_name(path.name + ".op").write_text(op)
        if content is None:
            path.with_name(path.name + ABSENT).touch()
        else:
            path.write_bytes(content)
        return v

    def op(self, name: str, v: int) -> str:
        path = self.root / name / f"{v:06d}.op"
        return path.read_text() if path.exists() else "?"

    def mark_fsynced(self, name: str, v: int) -> None:
        (self.root / name / f"{v:06d}{FSYNCED}").touch()

    def reset(self, name: str, content: bytes | None) -> None:
        """After a check: what the mount shows now is the one state every next round starts
        from (it is durable: it survived a crash)."""
        shutil.rmtree(self.root / name, ignore_errors=True)
        (self.root / name).mkdir(parents=True)
        self.intend(name, content)
        self.mark_fsynced(name, 0)


@dataclass
class Writer:
    soak: Path
    states: States
    parts: Path
    names: list[str]
    tmp: str
    rng: random.Random
    current: dict[str, bytes | None] = field(default_factory=dict)

    def run(self) -> None:
        for name in [*self.names, self.tmp]:
            versions = self.states.versions(name)
            self.current[name] = versions[max(versions)]
        stop = []
        signal.signal(signal.SIGUSR1, lambda *_: stop.append(True))  # --clean-stop
        while not stop:
            name = self.rng.choice(self.names)
            op = self.rng.choice(OPS)
            getattr(self, op)(name, op)

    def part(self) -> bytes:
        return self.rng.randbytes(self.rng.choice(PART_SIZES))

    def pause(self) -> float:
        return self.rng.uniform(0.05, 1.5)  # around the 1 s group publish interval

    def intend(self, name: str, content: bytes | None, op: str) -> int:
        self.current[name] = content
        return self.states.intend(name, content, op)

    def shell_new(self, name: str, op: str) -> None:
        old = self.current[name] or b""
        p1, p2 = self.part(), self.part()
        new = {
            "shell_new": p1 + p2,
            "shell_inplace": p1 + p2 + old[len(p1) + len(p2) :],
            "shell_append": old + p1 + p2,
        }[op]
        (self.parts / "p1").write_bytes(p1)
        (self.parts / "p2").write_bytes(p2)
        self.intend(name, new, op)
        env = {
            **os.environ,
            "F": str(self.soak / name),
            "P1": str(self.parts / "p1"),
            "P2": str(self.parts / "p2"),
            "S": f"{self.pause():.2f}",
        }
        subprocess.run(["bash", "-euc", SHELL.format(redir=REDIRS[op])], env=env, check=True)

    shell_inplace = shell_append = shell_new

    def py_fork_trunc(self, name: str, op: str) -> None:
        """Python writer whose descriptor is dup'ed and closed, inherited by a forked child
        that exits and by an exec'ed program, between two writes; fsync halfway or at the end
        on some runs."""
        old = self.current[name]
        in_place = op == "py_fork_pwrite" and old is not None
        flags = os.O_RDWR if in_place else os.O_WRONLY | os.O_CREAT | os.O_TRUNC
        base = old if in_place and old is not None else b""
        off = self.rng.randint(0, len(base)) if in_place else 0
        p1, p2 = self.part(), self.part()
        halfway = base[:off] + p1 + base[off + len(p1) :]
        new = halfway[: off + len(p1)] + p2 + halfway[off + len(p1) + len(p2) :]
        fsync_halfway, fsync_end = self.rng.random() < 0.25, self.rng.random() < 0.5
        if fsync_halfway:  # a completed fsync makes the halfway content an intended state
            self.intend(name, halfway, f"{op} fsync halfway")
        v = self.intend(name, new, op)
        fd = os.open(self.soak / name, flags, 0o644)
        try:
            os.pwrite(fd, p1, off)
            os.close(os.dup(fd))
            child = os.fork()
            if child == 0:
                os._exit(0)
            os.waitpid(child, 0)
            subprocess.run(["/bin/true"], pass_fds=(fd,), check=True)
            time.sleep(self.pause())
            if fsync_halfway:
                os.fsync(fd)
                self.states.mark_fsynced(name, v - 1)
            os.pwrite(fd, p2, off + len(p1))
            if fsync_end:
                os.fsync(fd)
                self.states.mark_fsynced(name, v)
        finally:
            os.close(fd)

    py_fork_pwrite = py_fork_trunc

    def rename(self, name: str, op: str) -> None:
        """Write a temp name in two parts with a child in between, then rename it over name;
        fsync of the file and of the directory on some runs."""
        content = self.part() + self.part()
        tmp = self.soak / self.tmp
        tv = self.intend(self.tmp, content, "rename: temp written")
        durable = self.rng.random() < 0.5
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, content[: len(content) // 2])
            subprocess.run(["/bin/true"], pass_fds=(fd,), check=True)
            time.sleep(self.pause())
            os.write(fd, content[len(content) // 2 :])
            if durable:
                os.fsync(fd)
                self.states.mark_fsynced(self.tmp, tv)
        finally:
            os.close(fd)
        v = self.intend(name, content, "rename: renamed over")
        gone = self.intend(self.tmp, None, "rename: renamed away")
        os.rename(tmp, self.soak / name)
        if durable:
            dirfd = os.open(self.soak, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(dirfd)
            finally:
                os.close(dirfd)
            self.states.mark_fsynced(name, v)
            self.states.mark_fsynced(self.tmp, gone)

    def plain(self, name: str, op: str) -> None:
        content = self.part()
        v = self.intend(name, content, op)
        fd = os.open(self.soak / name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, content)
            if self.rng.random() < 0.5:
                os.fsync(fd)
                self.states.mark_fsynced(name, v)
        finally:
            os.close(fd)


def writer_main(args: argparse.Namespace) -> int:
    parts = Path(args.parts)
    parts.mkdir(parents=True, exist_ok=True)
    writer = Writer(
        Path(args.soak),
        States(Path(args.expect)),
        parts,
        args.names.split(","),
        args.tmp,
        random.Random(args.seed),
    )
    try:
        writer.run()
    except (OSError, subprocess.CalledProcessError) as exc:  # the daemon died under it
        print(f"writer stopped: {exc}", file=sys.stderr)
    return 0


# --- the soak -------------------------------------------------------------------------------


@dataclass
class Tally:
    rounds: int = 0
    writes: int = 0  # states the writers intended (operations begun, halfway fsyncs included)
    files: int = 0
    torn: int = 0
    lost_fsync: int = 0
    backing_bad: int = 0
    stray: int = 0

    def add(self, other: Tally) -> None:
        for key in vars(self):
            setattr(self, key, getattr(self, key) + getattr(other, key))

    def bad(self) -> int:
        return self.torn + self.lost_fsync + self.backing_bad + self.stray

    def __str__(self) -> str:
        return (
            f"rounds {self.rounds:4d}  writes {self.writes:5d}  files checked {self.files:5d}  "
            f"torn {self.torn:3d}  "
            f"lost fsync {self.lost_fsync:3d}  backing bad {self.backing_bad:3d}  "
            f"stray temps {self.stray:3d}"
        )


def read_or_none(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


def describe(data: bytes | None) -> str:
    return "absent" if data is None else f"{len(data)} bytes"


def closest(data: bytes | None, versions: dict[int, bytes | None]) -> str:
    """How the shown content relates to the intended states: the one it shares the longest
    start with, and whether it is that state cut short."""
    if data is None:
        return "absent"
    best, common = -1, -1
    for v, content in versions.items():
        if content is None:
            continue
        n = common_start(data, content)
        if n > common:
            best, common = v, n
    if best < 0:
        return "no intended state has content"
    state = versions[best]
    assert state is not None
    if common == len(data):
        return f"the first {len(data)} bytes of version {best} ({len(state)} bytes)"
    return f"differs from version {best} ({len(state)} bytes) from byte {common}"


def common_start(a: bytes, b: bytes) -> int:
    """How many leading bytes a and b share."""
    n = min(len(a), len(b))
    if a[:n] == b[:n]:
        return n
    lo, hi = 0, n  # a[:lo] == b[:lo], a[:hi] != b[:hi]
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if a[:mid] == b[:mid] else (lo, mid)
    return lo


def keep_evidence(states: States, name: str, data: bytes | None) -> None:
    """Copy a torn file's content and intended states to WORK/torn/ (the check resets the
    states); --keep keeps them."""
    dest = states.root.parent / "torn" / f"{name}-{os.getpid()}-{time.monotonic_ns()}"
    shutil.copytree(states.root / name, dest / "intended")
    if data is not None:
        (dest / "shown").write_bytes(data)


def check(
    daemon: Daemon, states: States, names: list[str], problems: list[str], clean: bool
) -> Tally:
    """Every file against its allowed states, every backing file against `age -d`; after a
    clean stop (writers finished, daemon unmounted), only the last state is allowed."""
    tally = Tally(rounds=1)
    soak = daemon.mnt / SOAK
    tmp = os.listdir(daemon.store / META / "tmp")
    if tmp:
        tally.stray += len(tmp)
        problems.append(f"temp versions left in the store after the mount: {tmp[:5]}")
    shown = sorted(set(os.listdir(soak)) - set(names))
    if shown or set(os.listdir(daemon.mnt)) != {SOAK}:
        tally.stray += len(shown) or 1
        problems.append(f"names no writer made: {shown[:5]} / {os.listdir(daemon.mnt)[:5]}")
    for name in names:
        tally.files += 1
        data = read_or_none(soak / name)
        versions = states.versions(name)
        tally.writes += len(versions) - 1
        matching = [v for v, content in versions.items() if content == data]
        if not matching:
            tally.torn += 1
            latest = max(versions)
            problems.append(
                f"TORN {name}: shows {describe(data)}; intended states "
                f"{[describe(versions[v]) for v in sorted(versions)][-4:]} (last of "
                f"{len(versions)}: {states.op(name, latest)}); {closest(data, versions)}"
            )
            keep_evidence(states, name, data)
        elif clean and max(matching) != max(versions):
            tally.torn += 1
            problems.append(
                f"STALE {name}: shows version {max(matching)} after a clean unmount, the last "
                f"was {max(versions)} ({states.op(name, max(versions))})"
            )
        elif max(matching) < states.fsynced(name):
            tally.lost_fsync += 1
            problems.append(
                f"LOST FSYNC {name}: shows version {max(matching)}, "
                f"version {states.fsynced(name)} was fsynced"
            )
        backing = daemon.store / SOAK / f"{name}{SUFFIX}"
        try:
            stored = decrypt_backing(backing, daemon.identity) if backing.exists() else None
        except AssertionError as exc:
            tally.backing_bad += 1
            problems.append(f"BACKING {name}: {str(exc).splitlines()[0]}")
            stored = data
        if stored != data:
            tally.backing_bad += 1
            problems.append(f"BACKING {name}: age -d gives {describe(stored)}, the mount "
                            f"{describe(data)}")
        states.reset(name, data)
    for path in daemon.store.rglob(f"*{SUFFIX}"):  # also files outside the soak directory
        rel = path.relative_to(daemon.store)
        if rel.parts[0] not in (META, SOAK):
            try:
                decrypt_backing(path, daemon.identity)
            except AssertionError as exc:
                tally.backing_bad += 1
                problems.append(f"BACKING {rel}: {str(exc).splitlines()[0]}")
    return tally


def start_writers(
    work: Path, daemon: Daemon, writer_names: list[list[str]], seed: int, rng: random.Random
) -> list[subprocess.Popen]:
    writers = []
    for k, names in enumerate(writer_names):
        log = open(work / f"writer-{k}.log", "a")  # noqa: SIM115 - closed with the process
        writers.append(
            subprocess.Popen(
                [
                    sys.executable,
                    __file__,
                    "writer",
                    "--soak",
                    str(daemon.mnt / SOAK),
                    "--expect",
                    str(work / "expect"),
                    "--parts",
                    str(work / f"parts-{k}"),
                    "--names",
                    ",".join(names[:-1]),
                    "--tmp",
                    names[-1],
                    "--seed",
                    str(seed * 1000 + k + rng.randrange(1 << 30)),
                ],
                stdout=log,
                stderr=log,
                start_new_session=True,  # its shell children go down with it
            )
        )
        log.close()
    return writers


def stop_writers(writers: list[subprocess.Popen]) -> None:
    """--clean-stop: each writer finishes the operation it is in, then exits."""
    for writer in writers:
        with contextlib.suppress(ProcessLookupError):
            os.kill(writer.pid, signal.SIGUSR1)
    for writer in writers:
        writer.wait(120)


def kill_group(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(60)


def soak(args: argparse.Namespace) -> int:
    strategies = args.strategies.split(",")
    rng = random.Random(args.seed)
    work = Path(tempfile.mkdtemp(prefix="crash-soak-", dir=args.workdir))
    store, mnt, key = work / "store", work / "mnt", work / "key.txt"
    for path in (store, mnt):
        path.mkdir()
    for cmd in (("keygen", "-o", key), ("init", store, "--identity", key)):
        proc = cagefs(*cmd)
        if proc.returncode != 0:
            print(f"cagefs {cmd[0]} failed: {proc.stderr.strip()}", file=sys.stderr)
            return 2
    writer_names = [
        [*(f"w{k}-f{i}" for i in range(FILES_PER_WRITER)), f"w{k}-tmp"]
        for k in range(args.writers)
    ]
    names = [name for group in writer_names for name in group]
    states = States(work / "expect")
    for name in names:
        states.reset(name, None)
    tallies = {s: Tally() for s in strategies}
    daemon: Daemon | None = None
    writers: list[subprocess.Popen] = []
    tracebacks = 0
    print(f"crash soak: {args.rounds} rounds, strategies {strategies}, work dir {work}")
    try:
        for round_ in range(args.rounds + 1):
            strategy = strategies[round_ % len(strategies)]
            log = work / f"daemon-{round_:04d}.log"
            daemon = Daemon(store, mnt, key, log, strategy)
            daemon.start()
            (mnt / SOAK).mkdir(exist_ok=True)
            if round_ > 0:
                killed = strategies[(round_ - 1) % len(strategies)]
                problems: list[str] = []
                tally = check(daemon, states, names, problems, args.clean_stop)
                tallies[killed].add(tally)
                print(f"round {round_:4d} {killed:8s} {tally}", flush=True)
                for problem in problems:
                    print(f"    {problem}", flush=True)
            if round_ == args.rounds:
                break
            writers = start_writers(work, daemon, writer_names, args.seed, rng)
            time.sleep(rng.uniform(args.min_kill, args.max_kill))
            for k, writer in enumerate(writers):
                if writer.poll() is not None:
                    last = (work / f"writer-{k}.log").read_text().strip().splitlines()[-1:]
                    print(f"    writer {k} stopped before the kill: {last}", flush=True)
            if args.clean_stop:
                stop_writers(writers)
                daemon.stop_clean()
            else:
                daemon.kill9()
            tracebacks += daemon.log_text().count("Traceback")
            for pid in still_running(daemon.children, 10.0):  # sealers of the killed daemon
                print(f"    process {pid} of the killed daemon outlived it by 10 s; killed")
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            for writer in writers:
                kill_group(writer)
            writers = []
            daemon = None
    finally:
        for writer in writers:
            kill_group(writer)
        if daemon is not None:
            for problem in daemon.close():
                print(f"teardown: {problem}", file=sys.stderr)
    total = Tally()
    print("\nper strategy (the strategy the daemon had when it was killed):")
    for strategy, tally in tallies.items():
        print(f"  {strategy:8s} {tally}")
        total.add(tally)
    print(f"  {'TOTAL':8s} {total}  daemon tracebacks {tracebacks}")
    if total.bad() and args.keep:
        print(f"kept {work} for inspection (torn files: shown and intended in {work}/torn)")
    else:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if total.bad() or tracebacks else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="verb")
    w = sub.add_parser("writer", help="(internal) one writer process")
    for flag in ("--soak", "--expect", "--parts", "--names", "--tmp"):
        w.add_argument(flag, required=True)
    w.add_argument("--seed", type=int, required=True)
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--strategies", default=",".join(STRATEGIES))
    parser.add_argument("--writers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--min-kill", type=float, default=0.5, help="seconds before the kill")
    parser.add_argument("--max-kill", type=float, default=4.0)
    parser.add_argument("--workdir", default="/var/tmp")
    parser.add_argument(
        "--clean-stop",
        action="store_true",
        help="control run: instead of the kill, writers finish their operation and the daemon "
        "unmounts cleanly; every file must then show its last state (checks the checker)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the work dir after a failure")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(130))  # run the cleanup
    if args.verb == "writer":
        return writer_main(args)
    return soak(args)


if __name__ == "__main__":
    sys.exit(main())
