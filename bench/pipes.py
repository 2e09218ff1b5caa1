"""Pipes against files: the seed report's table (CAGE-12a, issue 19), in one run.

The seed measured an age tool whose pipe streaming ran at 20 % of its file throughput. For each
tool the same input is fed two ways, output to /dev/null, and the "pipe / file" throughput
ratio printed next to those 20 %:
  file: `TOOL < IN > /dev/null` (stdin is the file itself)
  pipe: `cat IN | TOOL > /dev/null` (cat writes 128 KiB pieces into a pipe)
for `cagefs encrypt`, `cagefs decrypt`, Go `age -e` and `age -d`, and the whole round trip
`cat IN | encrypt | decrypt` for both. IN is `--size-mib` MiB of random data in the page cache
(and its age encryption, made by `age`, for the decrypt rows). Through a mount (cagefs with
its default strategy, and gocryptfs), "file" is `dd if=IN of=MNT/f bs=1M` and "pipe" is
`cat IN | cat > MNT/f` (128 KiB writes), each timed from start to exit, the file removed after.

Every command runs once per round, all of them in each round, so that a slow phase of the
shared machine hits every row alike; medians of `--repeat` rounds count. The last columns are
the CPU time per GiB of the command's processes (cat included) and, for a mount, of its daemon
and the daemon's helpers: on a host shared with other work, seconds vary with what else runs,
CPU time much less. The table goes to `<results-dir>/pipes-latest.txt`, the numbers with
the command line to `<results-dir>/pipes-<date>.json`.
"""

import contextlib
import datetime
import json
import os
import resource
import shlex
import shutil
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from seq import (
    MIB,
    Work,
    cagefs_cli,
    cagefs_mount,
    check,
    environment,
    fmt,
    gocryptfs_mount,
    make_work,
    median,
    mounts_under,
    parse_args,
    ratio,
    run,
    unmount,
)

SEED_RATIO = 0.20  # the seed tool's pipe / file encrypt throughput (119 vs 591 MB/s)
SH = "/bin/sh"


@dataclass
class Row:
    """Seconds per run of one tool fed from a file and from a pipe; medians count."""

    name: str
    file_seconds: list[float] = field(default_factory=list)
    pipe_seconds: list[float] = field(default_factory=list)
    file_cpu: list[float] = field(default_factory=list)  # CPU-s per GiB (see module doc)
    pipe_cpu: list[float] = field(default_factory=list)

    @property
    def file(self) -> float | None:
        return median(self.file_seconds)

    @property
    def pipe(self) -> float | None:
        return median(self.pipe_seconds)

    @property
    def pipe_over_file(self) -> float | None:
        """Pipe throughput as a fraction of file throughput (the seed's 20 %)."""
        return ratio(self.file, self.pipe)


@dataclass
class Commands:
    """One row's two shell commands; None where a way does not apply."""

    file: str | None
    pipe: str | None
    after: str | None = None  # run untimed after each command (removes what it wrote)
    daemon: int | None = None  # a mount's daemon: its CPU time (and its children's) counts too


def timed_shell(
    command: str, seconds: list[float], cpu: list[float], mib: int, daemon: int | None
) -> None:
    before = children_cpu() + tree_cpu(daemon)
    start = time.perf_counter()
    run([SH, "-c", f"set -e; {command}"])
    seconds.append(time.perf_counter() - start)
    cpu.append((children_cpu() + tree_cpu(daemon) - before) * 1024 / mib)


def children_cpu() -> float:
    """CPU seconds of the children waited for so far (a shell counts its pipeline's)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def tree_cpu(pid: int | None) -> float:
    """CPU seconds of the live process `pid` and its live descendants, so far."""
    if pid is None:
        return 0.0
    children: dict[int, list[int]] = {}
    times: dict[int, float] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            children.setdefault(int(fields[1]), []).append(int(entry))
            times[int(entry)] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    total, todo = 0.0, [pid]
    while todo:
        member = todo.pop()
        total += times.get(member, 0.0)
        todo += children.get(member, [])
    return total


def serving(mnt: Path) -> int | None:
    """The pid of the daemon serving `mnt` (its command line names the mount point)."""
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
                if os.fsencode(mnt) in argv:
                    return int(entry)
    return None


def make_input(work: Work, mib: int) -> tuple[Path, Path]:
    """`mib` MiB of random data and its age encryption, both left in the page cache."""
    plain, encrypted = work.root / "input", work.root / "input.age"
    with open(plain, "wb") as f:
        for _ in range(mib):
            f.write(os.urandom(MIB))
    run(["age", "-r", work.recipient, "-o", str(encrypted), str(plain)])
    return plain, encrypted


def crypt_commands(work: Work, plain: Path, encrypted: Path) -> dict[str, Commands]:
    q = shlex.quote
    cagefs = shlex.join(cagefs_cli())
    enc = f"{cagefs} encrypt -r {q(work.recipient)}"
    dec = f"{cagefs} decrypt -i {q(str(work.identity))}"
    age_enc = f"age -r {q(work.recipient)}"
    age_dec = f"age -d -i {q(str(work.identity))}"
    p, e = q(str(plain)), q(str(encrypted))

    def both(tool: str, src: str) -> Commands:
        return Commands(f"{tool} < {src} > /dev/null", f"cat {src} | {tool} > /dev/null")

    def trip(a: str, b: str) -> Commands:
        return Commands(f"{a} < {p} | {b} > /dev/null", f"cat {p} | {a} | {b} > /dev/null")

    return {
        "cagefs encrypt": both(enc, p),
        "age -e": both(age_enc, p),
        "cagefs decrypt": both(dec, e),
        "age -d": both(age_dec, e),
        "cagefs encrypt | decrypt": trip(enc, dec),
        "age -e | age -d": trip(age_enc, age_dec),
    }


def mount_commands(mnt: Path, plain: Path) -> Commands:
    q = shlex.quote
    target, p = q(str(mnt / "f")), q(str(plain))
    return Commands(
        f"dd if={p} of={target} bs=1M status=none",
        f"cat {p} | cat > {target}",
        after=f"rm -f {target}",
        daemon=serving(mnt),
    )


@contextlib.contextmanager
def mounts(work: Work) -> Iterator[dict[str, Path]]:
    """A cagefs mount (default strategy) and a gocryptfs mount for the whole run."""
    with cagefs_mount(work, "auto", []) as cage, gocryptfs_mount(work) as gocryptfs:
        yield {"cagefs mount": cage, "gocryptfs mount": gocryptfs}


def measure(row: Row, commands: Commands, mib: int) -> None:
    for command, seconds, cpu in (
        (commands.file, row.file_seconds, row.file_cpu),
        (commands.pipe, row.pipe_seconds, row.pipe_cpu),
    ):
        if command is None:
            continue
        timed_shell(command, seconds, cpu, mib, commands.daemon)
        if commands.after:
            run([SH, "-c", commands.after])


# ---------------------------------------------------------------- report


def targets(rows: dict[str, Row]) -> list[dict]:
    """Issue 19: pipe >= 0.8x file for cagefs encrypt and decrypt; cagefs through a pipe >= Go
    age through a pipe, both ways; on the mount, 128 KiB writes from a pipe >= 0.8x dd bs=1M."""
    enc, dec, mount = rows["cagefs encrypt"], rows["cagefs decrypt"], rows["cagefs mount"]
    return [
        check("cagefs encrypt: pipe / file >= 0.8", enc.pipe_over_file, 0.8),
        check("cagefs decrypt: pipe / file >= 0.8", dec.pipe_over_file, 0.8),
        check("encrypt through a pipe: cagefs / age >= 1", ratio(rows["age -e"].pipe, enc.pipe), 1),
        check("decrypt through a pipe: cagefs / age >= 1", ratio(rows["age -d"].pipe, dec.pipe), 1),
        check("cagefs mount: cat | cat > MNT / dd bs=1M >= 0.8", mount.pipe_over_file, 0.8),
    ]


def report(rows: dict[str, Row], checks: list[dict], env: dict) -> str:
    lines = [
        f"$ {env['command']}",
        f"{env['size_mib']} MiB of random data, median of {env['repeat']}; {env['cpus']} CPUs,"
        f" kernel {env['kernel']}, load {env['load_before'][0]:.1f} before /"
        f" {env['load_after'][0]:.1f} after",
        "file: TOOL < IN > /dev/null (mounts: dd if=IN of=MNT/f bs=1M);"
        " pipe: cat IN | TOOL > /dev/null (mounts: cat IN | cat > MNT/f)",
        "",
        f"{'':26} {'file s':>7} {'pipe s':>7} {'file MB/s':>9} {'pipe MB/s':>9}"
        f" {'pipe/file':>9} {'seed':>5} {'CPU-s/GiB file':>14} {'pipe':>5}",
    ]
    size_mb = env["size_mib"] * MIB / 1e6
    for row in rows.values():
        lines.append(
            f"{row.name:26} {fmt(row.file, '7.2f')} {fmt(row.pipe, '7.2f')}"
            f" {fmt(ratio(size_mb, row.file), '9.0f')} {fmt(ratio(size_mb, row.pipe), '9.0f')}"
            f" {fmt(row.pipe_over_file, '8.0%')} {SEED_RATIO:5.0%}"
            f" {fmt(median(row.file_cpu), '14.2f')} {fmt(median(row.pipe_cpu), '5.2f')}"
        )
    lines += ["", "targets:"]
    for c in checks:
        value = f"{c['value']:.2f}" if c["value"] is not None else "-"
        lines.append(f"  [{c['status']}] {c['target']} (got {value}, need {c['need']})")
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
                "file_median": row.file,
                "pipe_median": row.pipe,
                "pipe_over_file": row.pipe_over_file,
            }
            for key, row in rows.items()
        },
        "targets": checks,
    }
    (where / f"pipes-{datetime.date.today().isoformat()}.json").write_text(
        json.dumps(results, indent=2) + "\n"
    )
    (where / "pipes-latest.txt").write_text(text)


# ---------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv, __doc__)
    args_text = sys.argv[1:] if argv is None else argv
    env = environment(args, shlex.join([".venv/bin/python", "bench/pipes.py", *args_text]))
    work = make_work(args.dir)
    try:
        plain, encrypted = make_input(work, args.size_mib)
        commands = crypt_commands(work, plain, encrypted)
        rows = {name: Row(name) for name in [*commands, "cagefs mount", "gocryptfs mount"]}
        with mounts(work) as points:
            commands |= {name: mount_commands(mnt, plain) for name, mnt in points.items()}
            for round_number in range(1, args.repeat + 1):
                for name, row in rows.items():
                    measure(row, commands[name], args.size_mib)
                    print(
                        f"  round {round_number}: {name}: file/pipe s"
                        f" {row.file_seconds[-1]:.2f}/{row.pipe_seconds[-1]:.2f}",
                        file=sys.stderr,
                        flush=True,
                    )
    finally:
        for mnt in mounts_under(work.root):  # never let rmtree reach into a live mount
            unmount(mnt, ["fusermount3", "-u", "-z", str(mnt)])
        shutil.rmtree(work.root, ignore_errors=True)
    env["load_after"] = os.getloadavg()
    checks = targets(rows)
    text = report(rows, checks, env)
    print(text, end="")
    save(args.results_dir, text, rows, checks, env)
    return 0


if __name__ == "__main__":
    sys.exit(main())
