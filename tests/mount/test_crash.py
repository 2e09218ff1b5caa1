"""I3 under `kill -9`: the daemon dies in the middle of heavy writes, fsyncs and renames, many
times over; after each remount every file is exactly one complete version, every backing file
passes `age -d`, no temp version is left or visible, and what was fsynced is there.
"""

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from .helpers import (
    META,
    SUFFIX,
    Daemon,
    decrypt_backing,
)

ROUNDS = 10
FILES = 6
MOVERS = 3

# The writer runs in its own process so that the test can kill it with the daemon. Every version
# of every file is recognisable: a header line naming it, then bytes derived from that header.
# The journal (on a plain disk, written unbuffered) records B(egin) before a version is written
# and D(one) once fsync returned for it, so the checker knows which versions must be durable.
WRITER = r"""
import os, random, sys
root, journal, start = sys.argv[1], sys.argv[2], int(sys.argv[3])
FILES, MOVERS = int(sys.argv[4]), int(sys.argv[5])
log = os.open(journal, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
rng = random.Random(start)

def content(name, v):
    size = random.Random(f"{name}/{v}").choice([0, 1, 1000, 65536, 65537, 300000, 2_500_000])
    head = f"crash-test {name} v{v} size {size}\n".encode()
    return head + random.Random(f"{name}:{v}").randbytes(size)

def note(kind, name, v):
    os.write(log, f"{kind} {name} {v}\n".encode())

def dirsync(path):
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

v = start
while True:
    v += 1
    i = rng.randrange(FILES + MOVERS)
    if i >= FILES:
        name = f"m{i - FILES}"
        here, there = (("a", "b") if os.path.exists(f"{root}/a/{name}") else ("b", "a"))
        os.rename(f"{root}/{here}/{name}", f"{root}/{there}/{name}")
        continue
    name = f"f{i}"
    data = content(name, v)
    note("B", name, v)
    if rng.random() < 0.5:
        fd = os.open(f"{root}/{name}", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        for off in range(0, len(data), 1 << 20):
            os.write(fd, data[off : off + (1 << 20)])
        os.fsync(fd)
        os.close(fd)
    else:
        tmp = f"{root}/{name}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.write(fd, data)
        os.fsync(fd)
        os.close(fd)
        os.rename(tmp, f"{root}/{name}")
        dirsync(root)
    note("D", name, v)
"""


def expected(name: str, v: int) -> bytes:
    """The same bytes the writer produced for (name, v)."""
    size = random.Random(f"{name}/{v}").choice([0, 1, 1000, 65536, 65537, 300000, 2_500_000])
    head = f"crash-test {name} v{v} size {size}\n".encode()
    return head + random.Random(f"{name}:{v}").randbytes(size)


def read_journal(path: Path) -> tuple[dict[str, set[int]], dict[str, int]]:
    """Versions begun per file, and the last version whose fsync returned."""
    begun: dict[str, set[int]] = {}
    done: dict[str, int] = {}
    for line in path.read_text().splitlines():
        kind, name, v = line.split()
        if kind == "B":
            begun.setdefault(name, set()).add(int(v))
        else:
            done[name] = max(done.get(name, 0), int(v))
    return begun, done


def version_of(data: bytes, name: str, begun: set[int]) -> int:
    """Which complete version data is; empty is a legal state between O_TRUNC and the write."""
    if not data:
        return 0
    head = data.split(b"\n", 1)[0].decode(errors="replace").split()
    assert head[:2] == ["crash-test", name.removesuffix(".tmp")], f"{name}: foreign content {head}"
    v = int(head[2][1:])
    assert v in begun, f"{name}: version {v} was never written"
    assert data == expected(head[1], v), f"{name}: version {v} is incomplete or corrupt"
    return v


def check_after_crash(mounted: Daemon, journal: Path, movers: list[str]) -> None:
    tmp = mounted.store / META / "tmp"
    assert not os.listdir(tmp), f"stray temps not removed at mount: {os.listdir(tmp)}"
    begun, done = read_journal(journal)
    root = mounted.mnt / "w"
    names = set(os.listdir(root))
    allowed = {"a", "b"} | {f"f{i}" for i in range(FILES)} | {f"f{i}.tmp" for i in range(FILES)}
    assert names <= allowed, f"unexpected names in the mount: {sorted(names - allowed)}"
    for name in names - {"a", "b"}:
        v = version_of(
            (root / name).read_bytes(), name, begun.get(name.removesuffix(".tmp"), set())
        )
        if name.endswith(".tmp"):
            continue
        last = done.get(name, 0)
        in_flight = any(b > last for b in begun.get(name, ()))
        assert v >= last or (v == 0 and in_flight), f"{name}: v{v} found, v{last} was fsynced"
    for name in movers:
        places = [d for d in ("a", "b") if (root / d / name).exists()]
        assert len(places) == 1, f"{name} is in {places} after the crash (rename not atomic)"
        assert (root / places[0] / name).read_bytes() == expected(name, 0)
    for path in mounted.store.rglob(f"*{SUFFIX}"):
        if META not in path.relative_to(mounted.store).parts:
            decrypt_backing(path, mounted.identity)


def read_tail(path: Path) -> str:
    return path.read_text()[-2000:]


def test_kill9_during_writes_and_renames(mounted: Daemon, tmp_path: Path) -> None:
    root = mounted.mnt / "w"
    for d in ("a", "b"):
        (root / d).mkdir(parents=True)
    movers = [f"m{i}" for i in range(MOVERS)]
    for name in movers:
        (root / "a" / name).write_bytes(expected(name, 0))
    mounted.remount()  # the movers are published before the first crash
    journal = tmp_path / "journal"
    rng = random.Random(11)
    for round_ in range(ROUNDS):
        args = [root, journal, (round_ + 1) * 100_000, FILES, MOVERS]
        with open(tmp_path / "writer.err", "w") as err:
            writer = subprocess.Popen(
                [sys.executable, "-c", WRITER, *map(str, args)],
                stderr=err,
            )
        try:
            time.sleep(rng.uniform(0.5, 2.5))  # let it get well into its work; not a measurement
            died = writer.poll() is not None
            assert not died, (
                f"the writer died before the crash: {read_tail(tmp_path / 'writer.err')}"
            )
            mounted.kill9()
        finally:
            writer.send_signal(signal.SIGKILL)
            writer.wait(60)
        mounted.start()
        check_after_crash(mounted, journal, movers)
    mounted.assert_store_matches()
