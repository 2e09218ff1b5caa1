"""Sequential write and cold read through cagefs, against a plain directory, gocryptfs and age.

For every target the same two commands run, and the median of `--repeat` runs counts. The runs
go in rounds, every target once per round, so that a slow phase of a shared machine hits all
targets alike instead of whichever was being measured:
  write: `dd if=/dev/zero of=DIR/big bs=1M count=N conv=fsync` (timed from start to exit,
         so the open, every write, the fsync and the close);
  read:  `sync; echo 3 > /proc/sys/vm/drop_caches`, then `dd if=DIR/big of=/dev/null bs=1M`
         (cold: neither the mount's page cache nor the backing files are cached).
Targets: cagefs on each strategy (one mount per strategy), the plain backing directory,
gocryptfs (`-scryptn 10`, a throwaway password), and the Go `age` CLI encrypting the same
file to disk (`age -e -o OUT IN`, then fsync of OUT: what `conv=fsync` costs dd) and
decrypting it cold to /dev/null.

A fresh file is written before every read, so the read is also cold for cagefs's own cache
of decrypted chunks (it is keyed by version). Each daemon logs to a file; a traceback in it
fails the run. MB is 10^6 bytes. The printed table goes to `<results-dir>/seq-latest.txt`,
the numbers with the command line to `<results-dir>/seq-<date>.json`.
"""

import argparse
import contextlib
import datetime
import json
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

MIB = 1 << 20
MB = 1_000_000
RESULTS_DIR = Path(__file__).resolve().parent / "results"
STRATEGIES = ("auto", "stream", "memory", "tempfile")
# The write targets are for the strategies that stream a file written from start to end: auto
# (the default) and stream. memory and tempfile stage the whole file and encrypt it at fsync,
# so they pay for the data twice by design (DESIGN.md, Strategies); their rows are for scale.
WRITE_TARGETS = ("auto", "stream")
PASSWORD_CMD = "echo seq-bench-password"  # gocryptfs -extpass: a throwaway volume
STOP_TIMEOUT = 300.0


@dataclass
class Row:
    """Runs of one target, as MB/s; the median is what the table and the targets use."""

    name: str
    writes: list[float] = field(default_factory=list)
    reads: list[float] = field(default_factory=list)
    write_cpu: list[float] = field(default_factory=list)  # machine CPU-s per GiB written
    read_cpu: list[float] = field(default_factory=list)
    note: str = ""

    @property
    def write(self) -> float | None:
        return median(self.writes)

    @property
    def read(self) -> float | None:
        return median(self.reads)


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def busy_seconds() -> float:
    """CPU time the whole machine has spent busy so far (every core, process and the kernel).

    Per GiB moved, it is steadier than MB/s on a shared host whose speed comes and goes, and it
    counts everything a target costs: dd, the kernel's FUSE work, a daemon and its helpers.
    """
    with open("/proc/stat") as f:
        user, nice, system, _idle, _iowait, irq, softirq = map(int, f.readline().split()[1:8])
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def cpu_per_gib(into: list[float], mib: int) -> Iterator[None]:
    """Append to `into` the machine's CPU seconds per GiB spent moving `mib` MiB in the block."""
    busy = busy_seconds()
    yield
    into.append((busy_seconds() - busy) * 1024 / mib)


# ---------------------------------------------------------------- commands


def run(cmd: list[str], **kwargs: object) -> subprocess.CompletedProcess:
    done = subprocess.run(cmd, capture_output=True, text=True, check=False, **kwargs)  # type: ignore[call-overload]
    if done.returncode != 0:
        raise RuntimeError(f"{shlex.join(cmd)}: {done.stderr.strip()[-2000:]}")
    return done


def timed(cmd: list[str]) -> float:
    start = time.perf_counter()
    run(cmd)
    return time.perf_counter() - start


def drop_caches() -> None:
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def dd_write(path: Path, mib: int) -> float:
    """MB/s of writing `mib` MiB of zeros to `path`, fsync included."""
    seconds = timed(["dd", "if=/dev/zero", f"of={path}", "bs=1M", f"count={mib}", "conv=fsync"])
    return mib * MIB / MB / seconds


def dd_read(path: Path) -> float:
    """MB/s of reading `path` (cold once the caller has dropped every cache)."""
    return path.stat().st_size / MB / timed(["dd", f"if={path}", "of=/dev/null", "bs=1M"])


def measure_dir(row: Row, directory: Path, mib: int) -> None:
    """Write then cold-read a fresh file in `directory`, once."""
    big = directory / "big"
    big.unlink(missing_ok=True)
    with cpu_per_gib(row.write_cpu, mib):
        row.writes.append(dd_write(big, mib))
    if big.stat().st_size != mib * MIB:
        raise RuntimeError(f"{big}: wrote {big.stat().st_size} bytes, not {mib * MIB}")
    drop_caches()
    with cpu_per_gib(row.read_cpu, mib):
        row.reads.append(dd_read(big))
    big.unlink()


# ---------------------------------------------------------------- cagefs


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


@dataclass
class Work:
    """The run's scratch directory and the key shared by the store and age."""

    root: Path
    identity: Path
    recipient: str


def make_work(parent: Path) -> Work:
    root = Path(tempfile.mkdtemp(prefix="cagefs-seq-", dir=parent))
    identity = root / "identity.txt"
    run(["age-keygen", "-o", str(identity)])
    recipient = run(["age-keygen", "-y", str(identity)]).stdout.strip()
    return Work(root, identity, recipient)


@contextlib.contextmanager
def cagefs_mount(work: Work, strategy: str, extra: list[str]) -> Iterator[Path]:
    """A fresh store mounted with `strategy`; unmounted (pending writes published) at the end."""
    store, mnt, log = (work.root / f"store-{strategy}", work.root / "mnt", work.root / "cagefs.log")
    mnt.mkdir(exist_ok=True)
    run(cagefs_cli("init", store, "--identity", work.identity))
    run(
        cagefs_cli(
            "mount", store, mnt, "-i", work.identity, "--strategy", strategy, "--log", log, *extra
        )
    )
    try:
        yield mnt
    finally:
        unmount(mnt, cagefs_cli("umount", mnt))
        text = log.read_text(errors="replace") if log.exists() else ""
        log.unlink(missing_ok=True)
        shutil.rmtree(store, ignore_errors=True)
    if "Traceback" in text:
        raise RuntimeError(f"the cagefs daemon ({strategy}) logged a traceback:\n{text[-3000:]}")


def read_ahead_kb(mnt: Path) -> int | None:
    """The readahead the kernel uses for the mount: the size of its cached read requests."""
    dev = os.stat(mnt).st_dev
    path = Path(f"/sys/class/bdi/{os.major(dev)}:{os.minor(dev)}/read_ahead_kb")
    return int(path.read_text()) if path.exists() else None


def cagefs_row(strategy: str, args: argparse.Namespace) -> Row:
    if strategy == "memory":
        note = f"staged in RAM, --memory-threshold {memory_threshold(args)}M"
    elif strategy == "tempfile":
        note = "staged in an encrypted scratch file"
    else:
        note = ""
    return Row(f"cagefs --strategy {strategy}", note=note)


def memory_threshold(args: argparse.Namespace) -> int:
    """The memory strategy stages a file in RAM whatever its size (the threshold only steers
    auto); the threshold given is the file size, so auto would do the same."""
    return max(args.size_mib, 1)


def bench_cagefs(
    row: Row, work: Work, strategy: str, args: argparse.Namespace, facts: dict
) -> None:
    extra = ["--memory-threshold", f"{memory_threshold(args)}M"] if strategy == "memory" else []
    with cagefs_mount(work, strategy, extra) as mnt:
        facts.setdefault("cagefs_read_ahead_kb", read_ahead_kb(mnt))
        measure_dir(row, mnt, args.size_mib)


# ---------------------------------------------------------------- references


def bench_plain(row: Row, work: Work, args: argparse.Namespace) -> None:
    plain = work.root / "plain"
    plain.mkdir()
    try:
        measure_dir(row, plain, args.size_mib)
    finally:
        shutil.rmtree(plain, ignore_errors=True)


@contextlib.contextmanager
def gocryptfs_mount(work: Work) -> Iterator[Path]:
    cipher, mnt = work.root / "gocryptfs-cipher", work.root / "gocryptfs-mnt"
    cipher.mkdir()
    mnt.mkdir(exist_ok=True)
    run(["gocryptfs", "-q", "-init", "-extpass", PASSWORD_CMD, "-scryptn", "10", str(cipher)])
    run(["gocryptfs", "-q", "-extpass", PASSWORD_CMD, str(cipher), str(mnt)])
    try:
        yield mnt
    finally:
        unmount(mnt, ["fusermount3", "-u", str(mnt)])
        shutil.rmtree(cipher, ignore_errors=True)


def bench_gocryptfs(row: Row, work: Work, args: argparse.Namespace) -> None:
    with gocryptfs_mount(work) as mnt:
        measure_dir(row, mnt, args.size_mib)


def bench_age(row: Row, work: Work, args: argparse.Namespace) -> None:
    """`age -e` of the same zeros, file to file, fsync'ed; `age -d` of it cold to /dev/null."""
    src, out = work.root / "age-plain", work.root / "age-out.age"
    run(["dd", "if=/dev/zero", f"of={src}", "bs=1M", f"count={args.size_mib}"])
    encrypt = ["age", "-e", "-r", work.recipient, "-o", str(out), str(src)]
    decrypt = ["age", "-d", "-i", str(work.identity), "-o", "/dev/null", str(out)]
    size = args.size_mib * MIB
    try:
        with cpu_per_gib(row.write_cpu, args.size_mib):
            start = time.perf_counter()
            run(encrypt)
            fd = os.open(out, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            row.writes.append(size / MB / (time.perf_counter() - start))
        drop_caches()
        with cpu_per_gib(row.read_cpu, args.size_mib):
            row.reads.append(size / MB / timed(decrypt))
    finally:
        src.unlink(missing_ok=True)
        out.unlink(missing_ok=True)


# ---------------------------------------------------------------- report


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a and b else None


def fmt(value: float | None, spec: str) -> str:
    return format(value, spec) if value is not None else "-".rjust(int(spec.split(".")[0]))


def check(target: str, value: float | None, need: float) -> dict:
    status = "SKIP" if value is None else ("PASS" if value >= need else "FAIL")
    return {"target": target, "value": value, "need": need, "status": status}


def targets(rows: dict[str, Row]) -> list[dict]:
    """Issue 3: write >= 2x gocryptfs and >= 500 MB/s for the strategies that stream a new file
    (`WRITE_TARGETS`), read >= gocryptfs for every strategy, stream write >= age -e."""
    gocryptfs, age = rows["gocryptfs"], rows["age"]
    checks = []
    for strategy in STRATEGIES:
        row = rows[strategy]
        if strategy in WRITE_TARGETS:
            checks += [
                check(
                    f"{strategy}: write / gocryptfs write >= 2",
                    ratio(row.write, gocryptfs.write),
                    2,
                ),
                check(f"{strategy}: write MB/s >= 500", row.write, 500),
            ]
        checks.append(
            check(f"{strategy}: read / gocryptfs read >= 1", ratio(row.read, gocryptfs.read), 1)
        )
    checks.append(check("stream: write / age -e >= 1", ratio(rows["stream"].write, age.write), 1))
    return checks


def report(rows: dict[str, Row], checks: list[dict], command: str, env: dict) -> str:
    lines = [
        f"$ {command}",
        f"{env['size_mib']} MiB, median of {env['repeat']}; {env['cpus']} CPUs, kernel"
        f" {env['kernel']}, load {env['load_before'][0]:.1f} before / {env['load_after'][0]:.1f}"
        f" after; cagefs readahead {env.get('cagefs_read_ahead_kb')} KiB; MB = 10^6 bytes",
        "",
        f"{'':38} {'write MB/s':>10} {'read MB/s':>10} {'w/gocfs':>8} {'r/gocfs':>8}"
        f" {'CPU-s/GiB w':>11} {'r':>5}",
    ]
    gocryptfs = rows["gocryptfs"]
    for row in rows.values():
        note = f"  ({row.note})" if row.note else ""
        lines.append(
            f"{row.name:38} {fmt(row.write, '10.0f')} {fmt(row.read, '10.0f')}"
            f" {fmt(ratio(row.write, gocryptfs.write), '7.2f')}x"
            f" {fmt(ratio(row.read, gocryptfs.read), '7.2f')}x"
            f" {fmt(median(row.write_cpu), '11.2f')} {fmt(median(row.read_cpu), '5.2f')}{note}"
        )
    lines += ["", "targets:"]
    for c in checks:
        value = f"{c['value']:.2f}" if c["value"] is not None else "-"
        lines.append(f"  [{c['status']}] {c['target']} (got {value}, need {c['need']})")
    staged = ", ".join(s for s in STRATEGIES if s not in WRITE_TARGETS)
    lines.append(f"  (write targets not set for {staged}: they stage the file, by design)")
    return "\n".join(lines) + "\n"


def save(where: Path, text: str, rows: dict[str, Row], checks: list[dict], env: dict) -> None:
    where.mkdir(parents=True, exist_ok=True)
    results = {
        "command": env["command"],
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "environment": env,
        "rows": {
            key: {
                **asdict(row),
                "write_median": row.write,
                "read_median": row.read,
                "write_cpu_median": median(row.write_cpu),
                "read_cpu_median": median(row.read_cpu),
            }
            for key, row in rows.items()
        },
        "targets": checks,
    }
    (where / f"seq-{datetime.date.today().isoformat()}.json").write_text(
        json.dumps(results, indent=2) + "\n"
    )
    (where / "seq-latest.txt").write_text(text)


# ---------------------------------------------------------------- main


def parse_args(argv: list[str] | None, description: str = __doc__) -> argparse.Namespace:
    """The options every mount benchmark takes (`replace.py` uses them too)."""
    parser = argparse.ArgumentParser(description=description.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024, help="file size (dd count of 1M)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per figure (median counts)")
    parser.add_argument("--dir", type=Path, default=Path("/var/tmp"), help="where scratch goes")
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    parser.add_argument("--quick", action="store_true", help="8 MiB, two rounds: a smoke test")
    args = parser.parse_args(argv)
    if args.quick:
        args.size_mib, args.repeat = 8, 2
    return args


def environment(args: argparse.Namespace, command: str) -> dict:
    return {
        "command": command,
        "size_mib": args.size_mib,
        "repeat": args.repeat,
        "python": platform.python_version(),
        "kernel": platform.release(),
        "cpus": os.cpu_count(),
        "gocryptfs": run(["gocryptfs", "-version"]).stdout.split(";")[0].strip(),
        "age": run(["age", "--version"]).stdout.strip(),
        "load_before": os.getloadavg(),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args_text = sys.argv[1:] if argv is None else argv
    command = shlex.join([".venv/bin/python", "bench/seq.py", *args_text])
    env = environment(args, command)
    work = make_work(args.dir)
    rows = {strategy: cagefs_row(strategy, args) for strategy in STRATEGIES} | {
        "plain": Row("plain backing directory"),
        "gocryptfs": Row("gocryptfs (-scryptn 10)"),
        "age": Row("age CLI -e / -d (file, fsync)", note="input file in page cache"),
    }
    steps: list[tuple[str, Callable[[Row], None]]] = [
        *((s, lambda row, s=s: bench_cagefs(row, work, s, args, env)) for s in STRATEGIES),
        ("plain", lambda row: bench_plain(row, work, args)),
        ("gocryptfs", lambda row: bench_gocryptfs(row, work, args)),
        ("age", lambda row: bench_age(row, work, args)),
    ]
    try:
        for round_number in range(1, args.repeat + 1):
            for key, step in steps:
                row = rows[key]
                step(row)
                print(
                    f"  round {round_number}: {row.name}: write/read MB/s"
                    f" {row.writes[-1]:.0f}/{row.reads[-1]:.0f}",
                    file=sys.stderr,
                    flush=True,
                )
    finally:
        for mnt in mounts_under(work.root):  # never let rmtree reach into a live mount
            unmount(mnt, ["fusermount3", "-u", "-z", str(mnt)])
        shutil.rmtree(work.root, ignore_errors=True)
    env["load_after"] = os.getloadavg()
    checks = targets(rows)
    text = report(rows, checks, command, env)
    print(text, end="")
    save(args.results_dir, text, rows, checks, env)
    return 0


if __name__ == "__main__":
    sys.exit(main())
