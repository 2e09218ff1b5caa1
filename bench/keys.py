"""Key verbs on a store of 1 GiB: verify, rekey and recipient add, next to Go `age -d`/`age -e`.

Every run goes in rounds, every command once per round (so that a slow phase of a shared
machine hits them alike), and the median of `--repeat` rounds counts. Before each command the
page cache is dropped (`sync; echo 3 > /proc/sys/vm/drop_caches`), so everything reads cold,
except `rekey (warm)`.
  verify:         `cagefs verify STORE -i KEY` (every chunk of every file decrypted)
  rekey:          `cagefs rekey STORE -i KEY` (every file decrypted and encrypted again)
  rekey (warm):   the same with the backing files read into the page cache first: what
                  rekey's CPU path does when the disk only has to take the writes
  recipients add: `cagefs recipients add STORE R2 -i KEY` (headers only, payloads copied); the
                  round then puts the store back with `recipients remove --no-rekey` (timed too)
  age -d:         the Go CLI decrypting every backing file to /dev/null
  age -e:         the Go CLI encrypting the same plaintext to files, then `sync`
  disk read:      `cat` of every backing file to /dev/null: the disk's cold read alone
  disk read+write: that `cat` and, at the same time, `dd oflag=direct conv=fsync` of as many
                  bytes to a new file: the disk reading the old and writing as much new at
                  once, as rekey and recipients add do, without crypto or copies (a serial
                  `dd` copy of each file with its fsync ran slower than rekey: no ceiling)
CPU-s/GiB is the CPU time (user + system) of each command and all its processes (rekey's
sealers too): on two cores a command whose CPU time is spread over two processes could run
at most at 2 GiB / CPU-s.
The store holds `--files` files of equal size, written with the engine (tagged as a mount
writes them). MB is 10^6 bytes. The table goes to `<results-dir>/keys-latest.txt`, the
numbers with the command line to `<results-dir>/keys-<date>.json`.
"""

import argparse
import datetime
import os
import platform
import shlex
import statistics
import sys
from pathlib import Path

from bench.harness import (
    MB,
    MIB,
    Work,
    cagefs_cli,
    cpu_seconds,
    drop_caches,
    standalone_parser,
    timed,
    work_dir,
)
from bench.report import save_standalone

TARGET_MBS = 500.0  # issue "Keys for years": verify and rekey at least this fast
COMMANDS = (
    "verify",
    "rekey",
    "rekey (warm)",
    "recipients add",
    "remove --no-rekey",
    "age -d",
    "age -e",
    "disk read",
    "disk read+write",
)
CEILINGS = {"verify": "disk read", "rekey": "disk read+write", "recipients add": "disk read+write"}
SH = "/bin/sh"


def measured(cmd: list[str], warm: str = "") -> tuple[float, float]:
    """Seconds `cmd` takes with every cache dropped first (then the shell command `warm`, if
    any, is run untimed), and the CPU seconds it used."""
    drop_caches()
    if warm:
        timed([SH, "-c", warm])
    cpu = cpu_seconds([])
    return timed(cmd), cpu_seconds([]) - cpu


def make_store(work: Work, files: int, file_mib: int) -> tuple[Path, str, Path]:
    """A store of `files` random files for the run's identity, a second recipient, and the
    same plaintext in a plain directory (for `age -e`)."""
    from cagefs.age.keys import parse_identity_file
    from cagefs.age.x25519 import X25519Identity
    from cagefs.store import init_store
    from cagefs.store.auth import FileAuth
    from cagefs.store.versions import NewVersion

    identities = parse_identity_file(work.identity.read_text())
    other = str(X25519Identity.generate().recipient())
    store_root, plain = work.root / "store", work.scratch("plain")
    store = init_store(store_root, identities=identities)
    for i in range(files):
        version = NewVersion(store_root, store.recipients, FileAuth(store.auth))
        with open(plain / f"f{i:02}", "wb") as out:
            for _ in range(file_mib):
                block = os.urandom(MIB)
                version.write(block)
                out.write(block)
        version.seal()
        os.close(version.fd)
        os.rename(version.path, store_root / f"f{i:02}.age")
    os.sync()
    return store_root, other, plain


def round_of(
    work: Work, store: Path, other: str, plain: Path, size: int
) -> dict[str, tuple[float, float]]:
    """(seconds, CPU seconds) of each command, in the order of COMMANDS."""
    backing = " ".join(shlex.quote(str(p)) for p in sorted(store.glob("*.age")))
    key, out = work.identity, shlex.quote(str(work.scratch("age-out")))
    encrypt = (
        f"for f in {shlex.quote(str(plain))}/*; do age -e -r {work.recipient} "
        f"-o {out}/$(basename $f).age $f; done; sync"
    )
    decrypt = f"for f in {backing}; do age -d -i {shlex.quote(str(key))} $f >/dev/null; done"
    read = f"cat {backing} >/dev/null"
    write = (
        f"dd if=/dev/zero of={out}/written bs=4M count={size // (4 * MIB)} oflag=direct "
        "conv=fsync status=none"
    )
    return {
        "verify": measured(cagefs_cli("verify", store, "-i", key)),
        "rekey": measured(cagefs_cli("rekey", store, "-i", key)),
        "rekey (warm)": measured(cagefs_cli("rekey", store, "-i", key), warm=read),
        "recipients add": measured(cagefs_cli("recipients", "add", store, other, "-i", key)),
        "remove --no-rekey": measured(
            cagefs_cli("recipients", "remove", store, other, "--no-rekey", "-i", key)
        ),
        "age -d": measured([SH, "-c", decrypt]),
        "age -e": measured([SH, "-c", encrypt]),
        "disk read": measured([SH, "-c", read]),
        "disk read+write": measured([SH, "-c", f"rm -f {out}/*; {read} & {write}; wait"]),
    }


def report(
    rates: dict[str, list[float]], cpu: dict[str, list[float]], size: int, command: str
) -> str:
    lines = [
        f"$ {command}",
        f"cagefs key verbs on {size / MIB:.0f} MiB, cold cache (but rekey (warm)), MB/s",
        f"{'command':<20} {'median':>8} {'CPU-s/GiB':>10}   runs",
    ]
    for name in COMMANDS:
        runs = rates[name]
        runs_text = " ".join(f"{r:.0f}" for r in runs)
        per_gib = statistics.median(cpu[name]) * (1 << 30) / size
        lines.append(f"{name:<20} {statistics.median(runs):>8.0f} {per_gib:>10.2f}   {runs_text}")
    for name in ("verify", "rekey"):
        got = statistics.median(rates[name])
        verdict = "met" if got >= TARGET_MBS else "NOT met"
        lines.append(f"target {name} >= {TARGET_MBS:.0f} MB/s: {verdict} ({got:.0f})")
    lines.append("against the disk in the same run (the median of each round's ratio):")
    for name, ceiling in CEILINGS.items():
        ratio = statistics.median(r / c for r, c in zip(rates[name], rates[ceiling], strict=True))
        lines.append(f"  {name} / {ceiling}: {ratio:.2f}x")
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = standalone_parser(__doc__, "store size", "16 MiB, one round: a smoke test")
    parser.add_argument("--files", type=int, default=16, help="files the size is spread over")
    args = parser.parse_args(argv)
    if args.quick:
        args.size_mib, args.files, args.repeat = 16, 4, 1
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command = shlex.join([sys.executable, "-m", "bench.keys", *(argv or sys.argv[1:])])
    file_mib = max(1, args.size_mib // args.files)
    size = file_mib * args.files * MIB
    rates: dict[str, list[float]] = {name: [] for name in COMMANDS}
    cpu: dict[str, list[float]] = {name: [] for name in COMMANDS}
    with work_dir(args.dir) as work:
        store, other, plain = make_store(work, args.files, file_mib)
        for _ in range(args.repeat):
            for name, (seconds, cpu_used) in round_of(work, store, other, plain, size).items():
                rates[name].append(size / MB / seconds)
                cpu[name].append(cpu_used)
    text = report(rates, cpu, size, command)
    print(text, end="")
    facts = {
        "command": command,
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "rates": rates,
        "cpu_seconds": cpu,
    }
    save_standalone(args.results_dir, "keys", text, facts)
    return 0


if __name__ == "__main__":
    sys.exit(main())
