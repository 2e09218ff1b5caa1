"""The change journal on real mounts: a small write + fsync costs a record, not a new version.

Records are age files in `.cagefs/journal/` (pyrage and Go `age` read them); the mount serves
base + records; they are folded into a new version when the file is idle, at unmount, and at
the next mount after a crash (kill -9 at any moment: every file is its last fsync'ed state or
a later one, never a mixture). Records of another version are never applied; a damaged one
refuses the mount naming it.
"""

import contextlib
import errno
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyrage
import pytest
from conftest import first_difference

from .helpers import (
    META,
    Daemon,
    DaemonExited,
    assert_same_tree,
    backing_tree,
    cagefs,
    decrypt_backing,
    one_line,
    opened,
    records,
    refused_for_damage,
    tree,
)
from .test_invariants import deleted_store_files_held

MIB = 1 << 20
BASE_SIZE = 3 * MIB


def slots(store: Path) -> list[Path]:
    return [path for path in (store / META / "journal").iterdir() if path.name.startswith("slot-")]


def record_line(record: Path, identity: Path) -> dict[str, Any]:
    """A record's JSON line, as Go `age -d` decrypts it."""
    plain = decrypt_backing(record, identity)
    assert plain.startswith(b"cagefs-journal v2\n"), plain[:40]
    line: dict[str, Any] = json.loads(plain[18 : plain.index(b"\n", 18)])
    return line


def make_base(daemon: Daemon, name: str = "f.bin", size: int = BASE_SIZE) -> bytes:
    """A published file of `size` random bytes (the base records apply to)."""
    data = random.Random(name).randbytes(size)
    (daemon.mnt / name).write_bytes(data)
    daemon.remount()
    return data


def edit(path: Path, offset: int, data: bytes, fsync: bool = True) -> None:
    with opened(path, os.O_WRONLY) as fd:
        os.pwrite(fd, data, offset)
        if fsync:
            os.fsync(fd)


def wait_for(check: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def identity_of(daemon: Daemon) -> pyrage.x25519.Identity:
    lines = daemon.identity.read_text().splitlines()
    return pyrage.x25519.Identity.from_str(next(k for k in lines if k.startswith("AGE-SECRET")))


@pytest.fixture
def journaled(request: pytest.FixtureRequest, daemons: Callable[..., Daemon]) -> Daemon:
    """A mount whose idle compaction is slow enough not to race the test's looks."""
    daemon = daemons(request.param, options=["--compact-idle", "600s"])
    daemon.start()
    return daemon


STRATEGIES = ("stream", "memory", "tempfile", "auto")
each_strategy = pytest.mark.parametrize("journaled", STRATEGIES, indirect=True)


@each_strategy
def test_a_small_fsync_writes_one_record_and_leaves_the_file(journaled: Daemon) -> None:
    data = bytearray(make_base(journaled))
    backing = journaled.store / "f.bin.age"
    before = backing.stat()
    marker = b"JOURNAL-MARKER-" * 10
    edit(journaled.mnt / "f.bin", 1_000_000, marker)
    data[1_000_000 : 1_000_000 + len(marker)] = marker
    (record,) = records(journaled.store)
    assert backing.stat().st_ino == before.st_ino, "the fsync re-published the whole file"
    raw = record.read_bytes()
    assert marker not in raw, "plaintext in a journal record"
    assert len(raw) < 300 * 1024, f"a record of {len(raw)} bytes for a 150-byte change"
    plain = pyrage.decrypt(raw, [identity_of(journaled)])
    assert plain.startswith(b"cagefs-journal v2\n") and marker in plain
    assert (journaled.mnt / "f.bin").read_bytes() == data
    # appended too, with its own record; then unmount folds both into the file
    with open(journaled.mnt / "f.bin", "ab") as f:
        f.write(b"one more line\n")
        f.flush()
        os.fsync(f.fileno())
    data += b"one more line\n"
    assert len(records(journaled.store)) == 2
    journaled.stop_clean()
    assert records(journaled.store) == []
    assert decrypt_backing(backing, journaled.identity) == data


def test_an_idle_file_has_its_records_folded(daemons: Callable[..., Daemon]) -> None:
    daemon = daemons("auto", options=["--compact-idle", "1s"])
    daemon.start()
    data = bytearray(make_base(daemon))
    edit(daemon.mnt / "f.bin", 5, b"changed")
    data[5:12] = b"changed"
    wait_for(lambda: not records(daemon.store))
    assert decrypt_backing(daemon.store / "f.bin.age", daemon.identity) == data
    assert (daemon.mnt / "f.bin").read_bytes() == data


@each_strategy
def test_records_survive_kill9_and_are_folded_at_the_next_mount(journaled: Daemon) -> None:
    data = bytearray(make_base(journaled))
    path = journaled.mnt / "f.bin"
    for i in range(5):
        chunk = f"fsync {i}".encode() * 100
        edit(path, i * 300_000, chunk)
        data[i * 300_000 : i * 300_000 + len(chunk)] = chunk
    with opened(path, os.O_WRONLY) as fd:  # truncated, then grown: the cut is recorded too
        os.ftruncate(fd, 1000)
        os.pwrite(fd, b"tail", 2 * MIB)
        os.fsync(fd)
    data = data[:1000] + bytes(2 * MIB - 1000) + b"tail"
    edit(path, 10, b"not fsynced", fsync=False)  # may or may not be there: a later state
    # 6 fsyncs; the last close may have written a 7th already (the release runs after it)
    assert len(records(journaled.store)) in (6, 7)
    journaled.kill9()
    journaled.start()
    assert records(journaled.store) == []
    got = (journaled.mnt / "f.bin").read_bytes()
    later = data[:10] + b"not fsynced" + data[21:]
    assert got in (bytes(data), later), "not the last fsync'ed state"
    assert decrypt_backing(journaled.store / "f.bin.age", journaled.identity) == got


@each_strategy
def test_attributes_set_after_the_last_record_are_durable_at_fsync(journaled: Daemon) -> None:
    """utime, chmod after a file's last record, then fsync: kill -9 keeps them (the times
    used to come back as the last record's)."""
    data = bytearray(make_base(journaled))
    path = journaled.mnt / "f.bin"
    # atime after mtime: relatime would move an older atime at the next read of the backing file
    times = (1_200_000_000_123_456_789, 1_100_000_000_987_654_321)
    fd = os.open(path, os.O_WRONLY)
    try:
        os.pwrite(fd, b"recorded", 70_000)
        os.fsync(fd)
        data[70_000:70_008] = b"recorded"
        os.utime(fd, ns=times)
        os.fchmod(fd, 0o640)
        os.fsync(fd)
        journaled.kill9()  # with the file still open: no close makes anything durable
    finally:
        with contextlib.suppress(OSError):  # its mount is gone
            os.close(fd)
    journaled.start()
    st = path.stat()
    assert (st.st_atime_ns, st.st_mtime_ns, oct(st.st_mode & 0o7777)) == (*times, "0o640")
    assert path.read_bytes() == data


def test_attributes_of_a_saved_file_are_durable_at_fsync(journaled_auto: Daemon) -> None:
    """A file with nothing unsaved: an fsync after utime syncs its backing file (a kill -9
    cannot show a lost inode change; this checks the times reach the backing file)."""
    daemon = journaled_auto
    make_base(daemon)
    path = daemon.mnt / "f.bin"
    times = (1_000_000_000_000_000_000, 1_200_000_000_000_000_000)
    fd = os.open(path, os.O_RDONLY)
    try:
        os.utime(fd, ns=times)
        os.fsync(fd)
        backing = (daemon.store / "f.bin.age").stat()
        assert (backing.st_atime_ns, backing.st_mtime_ns) == times
        daemon.kill9()
    finally:
        with contextlib.suppress(OSError):
            os.close(fd)
    daemon.start()
    assert (path.stat().st_atime_ns, path.stat().st_mtime_ns) == times


@each_strategy
def test_an_fsync_of_a_small_file_writes_a_record_a_close_does_not(journaled: Daemon) -> None:
    """Under 1 MiB, a change fsync'ed is a record (a SQLite -journal or young -wal is
    fsync'ed at every commit); one only closed is published whole with its group."""
    data = bytearray(make_base(journaled, "small.db", 20_000))
    path = journaled.mnt / "small.db"
    backing = journaled.store / "small.db.age"
    before = backing.stat().st_ino
    edit(path, 100, b"fsynced")
    data[100:107] = b"fsynced"
    assert len(records(journaled.store)) == 1
    assert backing.stat().st_ino == before, "the fsync re-published the whole file"
    edit(path, 200, b"closed", fsync=False)
    data[200:206] = b"closed"
    wait_for(lambda: not records(journaled.store) and backing.stat().st_ino != before)
    assert decrypt_backing(backing, journaled.identity) == data
    edit(path, 300, b"again")
    data[300:305] = b"again"
    assert len(records(journaled.store)) == 1
    journaled.kill9()
    journaled.start()
    assert records(journaled.store) == []
    assert path.read_bytes() == data
    edit(path, 400, b"then deleted")  # its records go once the unlink is durable
    assert len(records(journaled.store)) == 1
    path.unlink()
    wait_for(lambda: not records(journaled.store))
    assert deleted_store_files_held(journaled) == [], "the deleted file is still held open"


def test_records_made_obsolete_by_an_fsync_go_with_the_next_round(journaled_auto: Daemon) -> None:
    """A change too large for a record publishes the file whole at fsync; its records are
    dropped by the publisher's next round, not in the fsync. Killed before that round, the
    mount shows the fsync'ed file and recovery removes the leftovers."""
    daemon = journaled_auto
    data = bytearray(make_base(daemon))
    path = daemon.mnt / "f.bin"
    for i in range(3):
        edit(path, i * 100_000, b"record %d" % i)
        data[i * 100_000 : i * 100_000 + 8] = b"record %d" % i
    assert len(records(daemon.store)) == 3
    large = random.Random(3).randbytes(BASE_SIZE // 2)
    edit(path, 0, large)  # half the file: published whole
    data[: len(large)] = large
    wait_for(lambda: not records(daemon.store))
    for i in range(2):
        edit(path, i * 100_000, b"again %d" % i)
        data[i * 100_000 : i * 100_000 + 7] = b"again %d" % i
    edit(path, 0, large)
    data[: len(large)] = large
    daemon.kill9()
    daemon.start()
    assert records(daemon.store) == []
    assert path.read_bytes() == data


def test_rename_and_unlink_of_files_with_records(journaled_auto: Daemon) -> None:
    daemon = journaled_auto
    data = bytearray(make_base(daemon, "a.bin"))
    other = make_base(daemon, "b.bin")
    (daemon.mnt / "d").mkdir()
    edit(daemon.mnt / "a.bin", 7, b"renamed later")
    data[7:20] = b"renamed later"
    edit(daemon.mnt / "b.bin", 7, b"deleted later")
    os.rename(daemon.mnt / "a.bin", daemon.mnt / "d" / "a.bin")
    os.rename(daemon.mnt / "d", daemon.mnt / "e")
    os.unlink(daemon.mnt / "b.bin")
    assert other  # its records are dropped once the unlink is durable: by the next round

    def one_base() -> bool:  # a.bin's only (b.bin's slots are zeroed in the background)
        try:
            lines = [record_line(r, daemon.identity) for r in records(daemon.store)]
            return len({line["base"] for line in lines}) == 1
        except AssertionError:  # a slot being zeroed while age -d reads it
            return False

    wait_for(one_base)
    daemon.kill9()
    daemon.start()
    assert records(daemon.store) == []
    assert (daemon.mnt / "e" / "a.bin").read_bytes() == data
    assert not (daemon.mnt / "b.bin").exists()


@pytest.fixture
def journaled_auto(daemons: Callable[..., Daemon]) -> Daemon:
    daemon = daemons("auto", options=["--compact-idle", "600s"])
    daemon.start()
    return daemon


def test_records_of_another_version_are_never_applied(journaled_auto: Daemon) -> None:
    daemon = journaled_auto
    make_base(daemon)
    edit(daemon.mnt / "f.bin", 0, b"from the old base")
    (record,) = records(daemon.store)
    kept = record.read_bytes()
    daemon.stop_clean()  # folded: a new version, the record removed
    record.write_bytes(kept)  # as if a crash came after the fold, before the removal
    folded = decrypt_backing(daemon.store / "f.bin.age", daemon.identity)
    (daemon.mnt / "f.bin")  # remount with the stale record in place
    daemon.start()
    assert records(daemon.store) == []
    assert (daemon.mnt / "f.bin").read_bytes() == folded
    daemon.stop_clean()
    new = b"x" * 10
    daemon.start()
    (daemon.mnt / "f.bin").write_bytes(new)  # replaced: a record of the old base is obsolete
    daemon.stop_clean()
    record.write_bytes(kept)
    daemon.start()
    assert (daemon.mnt / "f.bin").read_bytes() == new
    assert records(daemon.store) == []


def test_a_damaged_record_refuses_the_mount_naming_it(journaled_auto: Daemon) -> None:
    daemon = journaled_auto
    make_base(daemon)
    edit(daemon.mnt / "f.bin", 0, b"will be damaged")
    daemon.kill9()
    (record,) = records(daemon.store)
    damaged = bytearray(record.read_bytes())
    damaged[-10] ^= 0x40
    record.write_bytes(damaged)
    refused_for_damage(daemon, record)
    assert record.exists(), "a damaged record was dropped"


def test_a_read_only_mount_writes_no_records_and_waits_for_folding(
    daemons: Callable[..., Daemon], identity: Path, tmp_path: Path
) -> None:
    daemon = daemons("auto", options=["--compact-idle", "600s"])
    daemon.start()
    make_base(daemon)
    edit(daemon.mnt / "f.bin", 0, b"pending")
    daemon.kill9()
    reader = daemons("auto", mnt=tmp_path / "ro", options=["-o", "ro"])
    with pytest.raises(DaemonExited) as refused:
        reader.start()
    assert "cagefs compact" in one_line(refused.value.log)  # (its own log file)
    proc = cagefs("compact", daemon.store, "-i", identity)
    assert proc.returncode == 0, proc.stderr
    assert records(daemon.store) == []
    assert decrypt_backing(daemon.store / "f.bin.age", identity)[:7] == b"pending"
    reader.start()
    assert (reader.mnt / "f.bin").read_bytes()[:7] == b"pending"
    with pytest.raises(OSError):
        edit(reader.mnt / "f.bin", 0, b"no")
    reader.stop_clean()
    assert records(daemon.store) == []


def test_kill9_of_recovery_leaves_it_to_the_next_mount(journaled_auto: Daemon) -> None:
    daemon = journaled_auto
    data = bytearray(make_base(daemon, size=48 * MIB))
    for i in range(8):
        edit(daemon.mnt / "f.bin", i * 5 * MIB, b"R%d" % i)
        data[i * 5 * MIB : i * 5 * MIB + 2] = b"R%d" % i
    daemon.kill9()
    for delay in (0.3, 0.8, 1.5):  # somewhere inside the re-encryption of 48 MiB, or after
        proc = subprocess.Popen(
            daemon.command(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        time.sleep(delay)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        subprocess.run(["fusermount3", "-u", "-z", str(daemon.mnt)], capture_output=True)
    daemon.start()
    assert records(daemon.store) == []
    assert (daemon.mnt / "f.bin").read_bytes() == data
    assert not os.listdir(daemon.store / META / "tmp")
    assert sys.executable  # (the daemon command runs this interpreter)


# The writer of the crash test: transactions of 1-3 writes (and now and then a truncation),
# each followed by fsync, in a process of its own. Its log (a plain file, unbuffered) says B
# before a transaction and D once its fsync returned; it pauses now and then, so that idle
# compaction runs (and is killed) too.
WRITER = r"""
import os, random, sys, time
path, log, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
sys.path.insert(0, sys.argv[4])
from test_journal_model import transaction
note = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
fd = os.open(path, os.O_RDWR)
k = 0
while True:
    k += 1
    os.write(note, b"B %d\n" % k)
    for kind, offset, data in transaction(seed, k):
        if kind == "w":
            os.pwrite(fd, data, offset)
        else:
            os.ftruncate(fd, offset)
    os.fsync(fd)
    os.write(note, b"D %d\n" % k)
    if random.Random(k).random() < 0.1:
        time.sleep(0.5)
"""


def fsynced(log: Path) -> tuple[int, int]:
    """The last transaction whose fsync returned, and the last one begun."""
    done = begun = 0
    for line in log.read_text().splitlines():
        kind, k = line.split()
        if kind == "B":
            begun = int(k)
        else:
            done = int(k)
    return done, begun


@each_strategy
def test_kill9_at_any_moment_leaves_the_last_fsynced_state(
    journaled: Daemon, tmp_path: Path
) -> None:
    from .test_journal_model import apply, transaction

    daemon = journaled
    daemon.stop_clean()
    daemon.options = ["--compact-idle", "0.3s"]  # compactions happen, and get killed
    daemon.start()
    data = bytearray(make_base(daemon, size=4 * MIB))
    rng = random.Random(3)
    for round_ in range(3):
        log = tmp_path / f"log{round_}"
        seed = round_ * 1000 + STRATEGIES.index(daemon.strategy or "auto")
        writer = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(daemon.mnt / "f.bin"), str(log), str(seed),
             str(Path(__file__).parent)]
        )
        try:
            time.sleep(rng.uniform(1.0, 3.0))  # well into its work; not a measurement
            assert writer.poll() is None, "the writer died before the crash"
            daemon.kill9()
        finally:
            writer.kill()
            writer.wait(60)
        daemon.start()
        done, begun = fsynced(log)
        assert done > 0, "no transaction completed before the crash"
        states = []
        state = bytearray(data)
        for k in range(1, begun + 1):
            apply(state, transaction(seed, k))
            if k >= done:
                states.append(bytes(state))
        got = (daemon.mnt / "f.bin").read_bytes()
        assert got in states, f"round {round_}: not the state of fsync {done} (or {begun})"
        assert records(daemon.store) == [], "records left after recovery"
        assert decrypt_backing(daemon.store / "f.bin.age", daemon.identity) == got
        data = bytearray(got)


def fill(path: Path) -> None:
    """Take the rest of the disk."""
    with open(path, "wb", buffering=0) as f:
        for piece in (64 * 1024, 4096, 512):
            with contextlib.suppress(OSError):
                while True:
                    f.write(bytes(piece))


def test_a_record_on_a_full_disk_fails_the_fsync_and_loses_nothing(
    daemons: Callable[..., Daemon], tmp_path: Path, identity: Path
) -> None:
    disk = tmp_path / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=12m", "cagefs-journal", disk], check=True)
    try:
        store = disk / "store"
        assert cagefs("init", store, "--identity", identity).returncode == 0
        daemon = daemons("auto", options=["--compact-idle", "600s"])
        daemon.store = store
        daemon.start()
        data = bytearray(make_base(daemon, size=2 * MIB))
        path = daemon.mnt / "f.bin"
        edit(path, 0, b"first")  # a record that fits
        data[0:5] = b"first"
        filler = disk / "filler"
        fill(filler)
        with opened(path, os.O_WRONLY) as fd:
            os.pwrite(fd, b"second", 100_000)
            with pytest.raises(OSError) as full:
                os.fsync(fd)
            assert full.value.errno == errno.ENOSPC
            assert path.read_bytes()[100_000:100_006] == b"second"  # still shown
            filler.unlink()
            os.fsync(fd)  # room again: now it is durable
        data[100_000:100_006] = b"second"
        fill(filler)
        fd = os.open(path, os.O_WRONLY)
        os.pwrite(fd, b"third", 200_000)
        with pytest.raises(OSError) as full:
            os.close(fd)  # and the last release cannot write it either: given up, logged
        assert full.value.errno == errno.ENOSPC
        try:
            wait_for(lambda: (daemon.mnt / "f.bin").read_bytes() == data, 10)  # base + records
        except AssertionError:
            got = (daemon.mnt / "f.bin").read_bytes()
            raise AssertionError(
                f"{len(got)} vs {len(data)} bytes, first difference at "
                f"{first_difference(got, data)}: "
                f"{daemon.log_text()[-1500:]}"
            ) from None
        filler.unlink()
        daemon.kill9()
        daemon.start()
        assert (daemon.mnt / "f.bin").read_bytes() == data
        daemon.stop_clean()
        assert not os.listdir(store / META / "tmp")
    finally:
        subprocess.run(["umount", "-l", disk], check=True)


def test_cagefs_compact_makes_every_backing_file_current(
    journaled_auto: Daemon, identity: Path
) -> None:
    daemon = journaled_auto
    for name in ("a.bin", "b.bin", "c.bin"):
        (daemon.mnt / name).write_bytes(random.Random(name).randbytes(2 * MIB))
    daemon.remount()
    edit(daemon.mnt / "a.bin", 100, b"edited a")
    edit(daemon.mnt / "b.bin", 2 * MIB - 3, b"grown b")
    edit(daemon.mnt / "c.bin", 0, b"gone")
    os.unlink(daemon.mnt / "c.bin")
    os.rename(daemon.mnt / "b.bin", daemon.mnt / "moved.bin")
    view = tree(daemon.mnt)
    daemon.kill9()
    exported = cagefs("export", daemon.store, daemon.store.parent / "out", "-i", identity)
    assert exported.returncode == 0 and "run `cagefs compact" in exported.stderr  # warned
    proc = cagefs("compact", daemon.store, "-i", identity)
    assert proc.returncode == 0, proc.stderr
    assert "2 file(s) brought up to date" in proc.stderr, proc.stderr
    assert records(daemon.store) == []
    assert_same_tree(backing_tree(daemon.store, identity), view, "store after compact vs mount")
    daemon.start()  # nothing left to do
    assert tree(daemon.mnt) == view


def test_a_large_file_keeps_its_records_past_64_mib(journaled_auto: Daemon) -> None:
    """Records may grow to the file's own size (at most 256 MiB) before the file is published
    whole: a 130 MiB file takes three records of 32 MiB (it took two, then a new version)."""
    daemon = journaled_auto
    data = bytearray(random.Random(7).randbytes(MIB) * 130)
    (daemon.mnt / "big.bin").write_bytes(data)
    daemon.remount()
    backing = daemon.store / "big.bin.age"
    before = backing.stat().st_ino
    for n in range(3):
        change = bytes([0xA0 + n]) * (32 * MIB)
        edit(daemon.mnt / "big.bin", n * 40 * MIB, change)
        data[n * 40 * MIB : n * 40 * MIB + len(change)] = change
    assert len(records(daemon.store)) == 3
    assert backing.stat().st_ino == before, "the file was published whole"
    daemon.kill9()
    daemon.start()
    assert records(daemon.store) == []
    assert (daemon.mnt / "big.bin").read_bytes() == data, "not the last fsync'ed state"


def test_a_truncation_to_a_block_boundary_is_recorded(journaled_auto: Daemon) -> None:
    daemon = journaled_auto
    data = make_base(daemon)
    with opened(daemon.mnt / "f.bin", os.O_WRONLY) as fd:
        os.ftruncate(fd, 2 * MIB)  # no block changes: only the size
        os.fsync(fd)
    assert len(records(daemon.store)) == 1
    assert (daemon.mnt / "f.bin").read_bytes() == data[: 2 * MIB]
    daemon.kill9()
    daemon.start()
    assert (daemon.mnt / "f.bin").read_bytes() == data[: 2 * MIB]


@each_strategy
def test_kill9_during_compaction_keeps_the_fsynced_state(journaled: Daemon) -> None:
    daemon = journaled
    daemon.stop_clean()
    daemon.options = ["--compact-idle", "1s"]
    daemon.start()
    data = bytearray(make_base(daemon, size=40 * MIB))
    for i in range(4):
        edit(daemon.mnt / "f.bin", i * 9 * MIB + 7, b"compact me %d" % i)
        data[i * 9 * MIB + 7 : i * 9 * MIB + 19] = b"compact me %d" % i
    tmp = daemon.store / META / "tmp"
    deadline = time.monotonic() + 60
    while not any(p.name.startswith("v-") for p in tmp.iterdir()):  # the fold's new version
        assert time.monotonic() < deadline, "no compaction started"
        time.sleep(0.002)
    daemon.kill9()
    daemon.start()
    assert records(daemon.store) == []
    assert (daemon.mnt / "f.bin").read_bytes() == data
    assert decrypt_backing(daemon.store / "f.bin.age", daemon.identity) == data
