"""Key verbs on a store of 1 GiB: verify, rekey and recipient add, next to Go `age -d`/`age -e`.

Every run goes in rounds, every command once per round (so that a slow phase of a shared
machine hits them alike), and the median of `--repeat` rounds counts. Before each command the
page cache is dropped (`sync; echo 3 > /proc/sys/vm/drop_caches`), so everything reads cold.
  verify:         `cagefs verify STORE -i KEY` (every chunk of every file decrypted)
  rekey:          `cagefs rekey STORE -i KEY` (every file decrypted and encrypted again)
  recipients add: `cagefs recipients add STORE R2 -i KEY` (headers only, payloads copied); the
                  round then puts the store back with `recipients remove --no-rekey` (timed too)
  age -d:         the Go CLI decrypting every backing file to /dev/null
  age -e:         the Go CLI encrypting the same plaintext to files, then `sync`
The store holds `--files` files of equal size, written with the engine (tagged as a mount
writes them). MB is 10^6 bytes. The table goes to `<results-dir>/keys-latest.txt`, the
numbers with the command line to `<results-dir>/keys-<date>.json`.
"""

import argparse
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
from pathlib import Path

MIB = 1 << 20
MB = 1_000_000
RESULTS_DIR = Path(__file__).resolve().parent / "results"
TARGET_MBS = 500.0  # issue "Keys for years": verify and rekey at least this fast
COMMANDS = ("verify", "rekey", "recipients add", "remove --no-rekey", "age -d", "age -e")


def cagefs(*args: object) -> list[str]:
    return [sys.executable, "-m", "cagefs", *map(str, args)]


def run(cmd: list[str]) -> None:
    proc = subprocess.run(cmd, capture_output=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"{shlex.join(cmd)} failed: {proc.stderr.decode()[-2000:]}")


def drop_caches() -> None:
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def timed(cmd: list[str], shell: bool = False) -> float:
    drop_caches()
    start = time.perf_counter()
    if shell:
        proc = subprocess.run(cmd[0], shell=True, capture_output=True, check=False)
        if proc.returncode != 0:
            raise SystemExit(f"{cmd[0]} failed: {proc.stderr.decode()[-2000:]}")
    else:
        run(cmd)
    return time.perf_counter() - start


def make_store(work: Path, files: int, file_mib: int) -> tuple[Path, Path, str, Path]:
    """A store of `files` random files, its identity file, a second recipient, and the same
    plaintext in a plain directory (for `age -e`)."""
    from cagefs.age.keys import identity_file_text
    from cagefs.age.x25519 import X25519Identity
    from cagefs.store import init_store
    from cagefs.store.auth import FileAuth
    from cagefs.store.versions import NewVersion

    identity = X25519Identity.generate()
    key = work / "key.txt"
    key.write_text(identity_file_text(identity))
    other = str(X25519Identity.generate().recipient())
    store_root, plain = work / "store", work / "plain"
    plain.mkdir()
    store = init_store(store_root, identities=[identity])
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
    return store_root, key, other, plain


def round_of(store: Path, key: Path, other: str, plain: Path, out: Path) -> dict[str, float]:
    backing = " ".join(shlex.quote(str(p)) for p in sorted(store.glob("*.age")))
    recipient = str(key.read_text().split("public key: ")[1].split()[0])
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    encrypt = (
        f"for f in {shlex.quote(str(plain))}/*; do age -e -r {recipient} "
        f"-o {shlex.quote(str(out))}/$(basename $f).age $f; done; sync"
    )
    return {
        "verify": timed(cagefs("verify", store, "-i", key)),
        "rekey": timed(cagefs("rekey", store, "-i", key)),
        "recipients add": timed(cagefs("recipients", "add", store, other, "-i", key)),
        "remove --no-rekey": timed(
            cagefs("recipients", "remove", store, other, "--no-rekey", "-i", key)
        ),
        "age -d": timed(
            [f"for f in {backing}; do age -d -i {shlex.quote(str(key))} $f >/dev/null; done"],
            shell=True,
        ),
        "age -e": timed([encrypt], shell=True),
    }


def report(rates: dict[str, list[float]], size: int, command: str) -> str:
    lines = [
        f"$ {command}",
        f"cagefs key verbs on {size / MIB:.0f} MiB, cold cache, MB/s",
        f"{'command':<20} {'median':>8}   runs",
    ]
    for name in COMMANDS:
        runs = rates[name]
        runs_text = " ".join(f"{r:.0f}" for r in runs)
        lines.append(f"{name:<20} {statistics.median(runs):>8.0f}   {runs_text}")
    for name in ("verify", "rekey"):
        got = statistics.median(rates[name])
        verdict = "met" if got >= TARGET_MBS else "NOT met"
        lines.append(f"target {name} >= {TARGET_MBS:.0f} MB/s: {verdict} ({got:.0f})")
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024, help="store size")
    parser.add_argument("--files", type=int, default=16, help="files the size is spread over")
    parser.add_argument("--repeat", type=int, default=3, help="rounds (the median counts)")
    parser.add_argument("--dir", type=Path, default=Path("/var/tmp"), help="where scratch goes")
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    parser.add_argument("--quick", action="store_true", help="16 MiB, one round: a smoke test")
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
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="cagefs-bench-keys-") as scratch:
        work = Path(scratch)
        store, key, other, plain = make_store(work, args.files, file_mib)
        for _ in range(args.repeat):
            for name, seconds in round_of(store, key, other, plain, work / "age-out").items():
                rates[name].append(size / MB / seconds)
    text = report(rates, size, command)
    print(text, end="")
    args.results_dir.mkdir(parents=True, exist_ok=True)
    (args.results_dir / "keys-latest.txt").write_text(text)
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    facts = {"command": command, "host": platform.node(), "cpus": os.cpu_count(), "rates": rates}
    (args.results_dir / f"keys-{stamp}.json").write_text(json.dumps(facts, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
