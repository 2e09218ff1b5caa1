"""Rewriting and removing a large file: how fast an fsync'ed overwrite is, and how long other
requests wait meanwhile and during the `rm` that follows.

cagefs never patches a backing file (I2): an overwrite writes a new version and renames it over
the old one, which the filesystem then frees. Freeing a 1 GiB file took 1.1-1.4 s here (ext4
mounted with `discard`), and cagefs used to do it inside the rename, on its event loop: the
application's fsync waited for it, and so did every other request to the mount.

For every target, per round: write `big` (N MiB) and a small `probe` file, sync, then time
  `dd if=/dev/zero of=DIR/big bs=1M count=N conv=fsync`   (from start to exit: the O_TRUNC
                                                           of the open is counted too)
while another thread opens and reads `probe` every 10 ms; the longest of those opens is the
stall. Then `big` is removed (`os.unlink`, the way `rm` does), probed the same way.
Targets: cagefs (auto), the plain backing directory, gocryptfs. Rounds alternate the targets,
so a slow phase of a shared machine hits them alike. The table goes to
`<results-dir>/replace-latest.txt`, the numbers to `<results-dir>/replace-<date>.json`.
"""

import argparse
import contextlib
import datetime
import os
import shlex
import statistics
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from bench.harness import (
    MB,
    MIB,
    Mounted,
    Work,
    cagefs_mount,
    gocryptfs_mount,
    plain_dir,
    run,
    standalone_parser,
    timed,
    work_dir,
)
from bench.report import check, save_standalone

PROBE_EVERY = 0.01


@dataclass
class Row:
    name: str
    overwrites: list[float] = field(default_factory=list)  # MB/s
    stalls: list[float] = field(default_factory=list)  # seconds
    rm_stalls: list[float] = field(default_factory=list)  # seconds

    @property
    def overwrite(self) -> float:
        return statistics.median(self.overwrites)

    @property
    def stall(self) -> float:
        return statistics.median(self.stalls)

    @property
    def rm_stall(self) -> float:
        return statistics.median(self.rm_stalls)


class Probe:
    """Opens and reads a small file over and over on a thread; remembers the longest wait."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._stop = threading.Event()
        self.longest = 0.0
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "Probe":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            start = time.perf_counter()
            with open(self._path, "rb") as f:
                f.read()
            self.longest = max(self.longest, time.perf_counter() - start)
            time.sleep(PROBE_EVERY)


def measure(row: Row, directory: Path, mib: int) -> None:
    """One round: an fsync'ed overwrite of a large file, then its removal, probed for stalls."""
    big, probe = directory / "big", directory / "probe"
    dd = ["dd", "if=/dev/zero", f"of={big}", "bs=1M", f"count={mib}", "conv=fsync"]
    run(dd)
    probe.write_bytes(b"probe")
    os.sync()
    with Probe(probe) as watch:
        seconds = timed(dd)
    row.overwrites.append(mib * MIB / MB / seconds)
    row.stalls.append(watch.longest)
    with Probe(probe) as watch:
        big.unlink()
    row.rm_stalls.append(watch.longest)
    probe.unlink()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = standalone_parser(
        __doc__, "file size (dd count of 1M)", "8 MiB, two rounds: a smoke test"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.size_mib, args.repeat = 8, 2
    return args


def report(rows: dict[str, Row], checks: list[dict], command: str, args: argparse.Namespace) -> str:
    lines = [
        f"$ {command}",
        f"{args.size_mib} MiB, median of {args.repeat}; {os.cpu_count()} CPUs,"
        f" load {os.getloadavg()[0]:.1f}; MB = 10^6 bytes",
        "",
        f"{'':30} {'overwrite MB/s':>15} {'longest stall':>14} {'rm: longest stall':>18}",
    ]
    for row in rows.values():
        lines.append(
            f"{row.name:30} {row.overwrite:15.0f} {row.stall * 1000:11.0f} ms"
            f" {row.rm_stall * 1000:15.0f} ms"
        )
    lines += ["", "targets:"]
    for c in checks:
        lines.append(f"  [{c['status']}] {c['target']} (got {c['value']:.2f}, need {c['need']})")
    return "\n".join(lines) + "\n"


def targets(rows: dict[str, Row]) -> list[dict]:
    """An overwrite streams like a new file (>= 2x gocryptfs, as in seq.py), and other
    requests wait no longer than they do on gocryptfs, give or take a scheduling tick, during
    the overwrite or during the `rm`."""
    cagefs, gocryptfs = rows["cagefs"], rows["gocryptfs"]
    return [
        check("overwrite / gocryptfs overwrite >= 2", cagefs.overwrite / gocryptfs.overwrite, 2),
        check(
            "(gocryptfs stall + 50 ms) / cagefs stall >= 1",
            (gocryptfs.stall + 0.05) / cagefs.stall,
            1,
        ),
        check(
            "rm: (gocryptfs stall + 50 ms) / cagefs stall >= 1",
            (gocryptfs.rm_stall + 0.05) / cagefs.rm_stall,
            1,
        ),
    ]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command = shlex.join([".venv/bin/python", "-m", "bench.replace", *(argv or sys.argv[1:])])
    rows = {
        "cagefs": Row("cagefs --strategy auto"),
        "plain": Row("plain backing directory"),
        "gocryptfs": Row("gocryptfs (-scryptn 10)"),
    }
    places: dict[str, Callable[[Work], contextlib.AbstractContextManager[Mounted]]] = {
        "cagefs": cagefs_mount("auto"),
        "plain": plain_dir,
        "gocryptfs": gocryptfs_mount,
    }
    with work_dir(args.dir) as work:
        for round_number in range(1, args.repeat + 1):
            for key, place in places.items():
                with place(work) as mounted:
                    measure(rows[key], mounted.path, args.size_mib)
                row = rows[key]
                print(
                    f"  round {round_number}: {row.name}: {row.overwrites[-1]:.0f} MB/s,"
                    f" longest stall {row.stalls[-1] * 1000:.0f} ms,"
                    f" during rm {row.rm_stalls[-1] * 1000:.0f} ms",
                    file=sys.stderr,
                    flush=True,
                )
    checks = targets(rows)
    text = report(rows, checks, command, args)
    print(text, end="")
    results = {
        "command": command,
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "rows": {
            key: {**asdict(row), "overwrite_median": row.overwrite} for key, row in rows.items()
        },
        "targets": checks,
    }
    save_standalone(args.results_dir, "replace", text, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
