"""`python -m bench`: every workload against the plain directory, gocryptfs and cagefs, in one run.

Runs go in rounds: every workload on every target once per round, each on a fresh mount, so that
a slow phase of a shared machine hits every target alike; each figure is the median of the
rounds. While a workload runs, the memory of the process serving the mount and its children
(cagefs's sealers; resident, shared pages counted once) is sampled and their CPU time counted;
mount time is recorded per mount. A workload that fails on a target is recorded as an error
for it (the others go on) and makes the exit status 1. The results, a table and charts go to a
new directory under --results-dir, saved after every round (see bench/README.md).
"""

import argparse
import datetime
import importlib
import os
import shlex
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

from bench.harness import (
    MIB,
    RESULTS_DIR,
    STRATEGIES,
    Metric,
    RssPeak,
    Settings,
    Work,
    Workload,
    server_cpu_seconds,
    targets,
    work_dir,
)
from bench.report import Results, save

# One module per kind of measurement, each with a `WORKLOAD` (a harness.Workload); a new
# measurement is a new module named here.
WORKLOAD_MODULES = (
    "bench.seq",
    "bench.fiojobs",
    "bench.smallfiles",
    "bench.sqlite",
    "bench.append",
)
WORKLOADS: list[Workload] = [importlib.import_module(m).WORKLOAD for m in WORKLOAD_MODULES]
MOUNT = Metric("mount", "mount time", "s", lower_is_better=True)


def rss_metric(workload: Workload) -> Metric:
    label = f"daemon memory peak (PSS): {workload.title}"
    return Metric(f"rss.{workload.name}", label, "MiB", lower_is_better=True)


def cpu_metric(workload: Workload) -> Metric:
    return Metric(f"cpu.{workload.name}", f"daemon CPU time: {workload.title}", "CPU-s", True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    names = [w.name for w in WORKLOADS]
    parser.add_argument(
        "--workloads", default=",".join(names), help=f"comma-separated, of {','.join(names)}"
    )
    parser.add_argument(
        "--strategies",
        nargs="?",
        const=",".join(STRATEGIES),
        default="auto",
        help="cagefs strategies to mount (alone: all four; default: auto)",
    )
    parser.add_argument("--repeat", type=int, default=3, help="rounds (the median counts)")
    parser.add_argument("--seq-mib", type=int, default=1024, help="dd file size")
    parser.add_argument("--fio-mib", type=int, default=1024, help="fio file size")
    parser.add_argument(
        "--fio-runtime", type=int, help="seconds per fio job (0: 64 requests each)"
    )
    parser.add_argument("--files", type=int, default=20_000, help="small files in the tree")
    parser.add_argument("--sqlite-mib", type=int, default=50, help="SQLite database size")
    parser.add_argument("--transactions", type=int, default=1000, help="per SQLite mode")
    parser.add_argument(
        "--sqlite-seconds", type=float, default=30, help="time limit per SQLite mode"
    )
    parser.add_argument("--append-mib", type=int, default=1024, help="file lines go to")
    parser.add_argument("--appends", type=int, default=100, help="lines appended, each fsync'ed")
    parser.add_argument("--dir", type=Path, default=Path("/var/tmp"), help="where scratch goes")
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    parser.add_argument("--no-charts", action="store_true", help="skip the PNG charts")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one round: a smoke test")
    args = parser.parse_args(argv)
    if args.quick:
        args.repeat, args.seq_mib, args.fio_mib, args.fio_runtime = 1, 8, 4, 0
        args.files, args.sqlite_mib, args.transactions, args.sqlite_seconds = 200, 1, 10, 3
        args.append_mib, args.appends = 4, 10
    unknown = set(args.workloads.split(",")) - set(names)
    strategies_unknown = set(args.strategies.split(",")) - set(STRATEGIES)
    if unknown or strategies_unknown:
        parser.error(f"unknown: {', '.join(sorted(unknown | strategies_unknown))}")
    return args


def settings_from(args: argparse.Namespace) -> Settings:
    return Settings(
        quick=args.quick,
        seq_mib=args.seq_mib,
        fio_mib=args.fio_mib,
        fio_runtime=args.fio_runtime,
        files=args.files,
        sqlite_mib=args.sqlite_mib,
        transactions=args.transactions,
        sqlite_seconds=args.sqlite_seconds,
        append_mib=args.append_mib,
        appends=args.appends,
    )


def progress(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def run_rounds(
    args: argparse.Namespace,
    workloads: list[Workload],
    work: Work,
    results: Results,
    after_round: Callable[[int], None],
) -> None:
    settings = settings_from(args)
    # memory stages in RAM whatever the size; the threshold (steering auto) is the largest file
    threshold = max(args.seq_mib, args.fio_mib, args.sqlite_mib, 1)
    mounts = targets(args.strategies.split(","), lambda: ["--memory-threshold", f"{threshold}M"])
    for target in mounts:
        results.column(target.key, target.label, target.kind)
    for workload in workloads:
        for key, label in workload.reference_labels.items():
            results.column(key, label, "reference")
    for workload in workloads:
        progress(f"preparing {workload.name}")
        workload.prepare(work, settings)
    for round_number in range(1, args.repeat + 1):
        for workload in workloads:
            for target in mounts:
                progress(f"round {round_number}: {workload.name} on {target.label}")
                try:
                    with target.mount(work) as mounted:
                        if mounted.mount_seconds is not None:
                            results.add("resources", {MOUNT: mounted.mount_seconds}, target.key)
                        cpu = server_cpu_seconds(mounted.servers)
                        with RssPeak(mounted.servers) as rss:
                            figures = workload.measure(mounted, settings)
                        cpu = server_cpu_seconds(mounted.servers) - cpu
                    results.add(workload.name, figures, target.key)
                    if mounted.servers:
                        used = {rss_metric(workload): rss.peak / MIB, cpu_metric(workload): cpu}
                        results.add("resources", used, target.key)
                except Exception as error:
                    results.error(workload.name, target.key, round_number, error)
                    progress(f"  error: {str(error)[:500]}")
            try:
                for key, figures in workload.references(work, settings).items():
                    results.add(workload.name, figures, key)
            except Exception as error:
                results.error(workload.name, "references", round_number, error)
                progress(f"  error: {str(error)[:500]}")
        after_round(round_number)


def stop(signum: int, frame: object) -> None:
    """SIGTERM unwinds like ^C: every mount is unmounted and the scratch removed."""
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args_text = sys.argv[1:] if argv is None else argv
    command = shlex.join([".venv/bin/python", "-m", "bench", *args_text])
    chosen = args.workloads.split(",")
    workloads = [w for w in WORKLOADS if w.name in chosen]
    results = Results(command, vars(args), os.getloadavg())
    for workload in workloads:
        results.section(workload.name, workload.title)
    results.section("resources", "Resources")
    where = args.results_dir / datetime.datetime.now().strftime("%Y-%m-%d-%H%M")

    def after_round(done: int) -> None:
        """Save what the rounds so far measured: a run stopped later keeps them."""
        results.rounds_done = done
        save(results, where, charts=not args.no_charts)
        progress(f"round {done} of {args.repeat} saved in {where}")

    signal.signal(signal.SIGTERM, stop)
    try:
        with work_dir(args.dir) as work:
            run_rounds(args, workloads, work, results, after_round)
    except KeyboardInterrupt:
        progress(f"stopped; the finished rounds are in {where}")
        return 130
    print(results.text_table(), end="")
    print(f"results: {where}")
    return 1 if results.errors else 0


if __name__ == "__main__":
    sys.exit(main())
