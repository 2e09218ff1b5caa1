"""The sealer process: a payload handed over mid-way is finished by a real child process, and
its file decrypts with the Go `age` CLI and pyrage; failures come back as one clear error."""

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pyrage
import pytest
from conftest import KeyFile
from mount.helpers import resident_in, still_running, wait_until

from cagefs.age import CHUNK_SIZE, parse_recipient
from cagefs.fs.streaming import INLINE_UNTIL, StreamWriter, write_out
from cagefs.store import sealer as sealer_module
from cagefs.store.auth import AuthKey, FileAuth
from cagefs.store.layout import create_meta_dirs
from cagefs.store.sealer import (
    RING_SIZE,
    RING_SLOTS,
    SLOT_SIZE,
    Sealer,
    SealerError,
    SealerPool,
    SealJob,
)
from cagefs.store.versions import NewVersion

AUTH = FileAuth(AuthKey.generate())

MIB = 1 << 20


@pytest.fixture
def root(tmp_path: Path) -> Path:
    create_meta_dirs(tmp_path)
    return tmp_path


@pytest.fixture
def pool() -> Iterator[SealerPool]:
    sealers = SealerPool()
    yield sealers
    sealers.close()


def decrypt_with_age(path: str, keyfile: KeyFile) -> bytes:
    done = subprocess.run(
        ["age", "-d", "-i", str(keyfile.path), path], capture_output=True, check=True
    )
    return done.stdout


def new_version(root: Path, keyfile: KeyFile, head: bytes) -> NewVersion:
    version = NewVersion(root, [parse_recipient(keyfile.recipient)], AUTH)
    version.write(head)
    return version


@pytest.mark.parametrize(
    "head_size",
    [0, 1, 64 * 1024 - 1, 64 * 1024, 64 * 1024 + 1, MIB, 2 * MIB + 5],
    ids=lambda n: f"head{n}",
)
def test_a_handed_over_payload_decrypts(
    root: Path, keyfile: KeyFile, pool: SealerPool, head_size: int
) -> None:
    """Writes of every shape after the hand-over: tiny, chunk-sized, larger than a slot, and
    more in all than the ring holds, so slots are reused."""
    data = os.urandom(head_size + 3 * SLOT_SIZE * RING_SLOTS // 4 + 12345)
    version = new_version(root, keyfile, data[:head_size])
    sealer = pool.take()
    assert sealer is not None
    job = SealJob(sealer, version.fd, version.hand_over())
    at = head_size
    for size in [1, 100, 64 * 1024, SLOT_SIZE + 7, 3 * SLOT_SIZE, 4096] * 1000:
        if at >= len(data):
            break
        job.write(data[at : at + size])
        at += size
    job.write(data[at:])
    assert job.finish() == len(data)
    pool.give_back(sealer)
    assert decrypt_with_age(version.path, keyfile) == data
    assert pyrage.decrypt(Path(version.path).read_bytes(), [keyfile_identity(keyfile)]) == data
    version.discard()


def test_room_is_what_a_write_takes_without_waiting(
    root: Path, keyfile: KeyFile, pool: SealerPool
) -> None:
    """The event loop asks `room()` before it writes, so a write within it must never wait for
    the sealer: here the sealer is stopped, and such writes still return. A partly filled slot
    reaches the sealer only when sent, and what was sent all comes out in the file."""
    data = os.urandom(RING_SLOTS * SLOT_SIZE + 3 * SLOT_SIZE // 2)
    version = new_version(root, keyfile, b"")
    sealer = pool.take()
    assert sealer is not None
    job = SealJob(sealer, version.fd, version.hand_over())
    assert job.room() == RING_SLOTS * SLOT_SIZE
    sealer.process.send_signal(signal.SIGSTOP)
    try:
        at = 0
        for size in (10, SLOT_SIZE - 10, 3 * SLOT_SIZE + 5, 100):
            job.write(data[at : at + size])
            at += size
            assert job.room() == RING_SLOTS * SLOT_SIZE - at
        job.write(data[at : at + job.room()])
        at = RING_SLOTS * SLOT_SIZE
        assert job.room() == 0
        job.collect()  # nothing to take in yet: returns at once
        assert job.room() == 0
    finally:
        sealer.process.send_signal(signal.SIGCONT)
    job.write(data[at:])  # waits for slots to come back
    job.send()
    assert job.finish() == len(data)
    pool.give_back(sealer)
    assert decrypt_with_age(version.path, keyfile) == data
    version.discard()


def test_a_sealer_is_reused_job_after_job(root: Path, keyfile: KeyFile, pool: SealerPool) -> None:
    first = pool.take()
    assert first is not None
    for n in range(3):
        data = os.urandom(MIB + n)
        version = new_version(root, keyfile, data[:10])
        sealer = first if n == 0 else pool.take()
        assert sealer is first, "the idle sealer should be taken again"
        job = SealJob(sealer, version.fd, version.hand_over())
        job.write(data[10:])
        job.finish()
        pool.give_back(sealer)
        assert decrypt_with_age(version.path, keyfile) == data
        version.discard()


def test_an_idle_sealer_gives_its_memory_back(
    root: Path, keyfile: KeyFile, pool: SealerPool
) -> None:
    """A job writes through the whole ring and the sealer's output buffers: 25 MiB that stayed
    resident while the sealer idled (under fio, beside a full chunk cache). `trim_idle` gives
    them back (the ring at once, the buffers when the sealer reads TRIM), and the sealer still
    seals its next job; a sealer that has not worked since is left alone."""
    sealer = pool.take()
    assert sealer is not None
    held = ("/memfd:cagefs-ring", "/dev/zero")  # its ring, and its buffers (mmap(-1))
    for n in range(2):
        assert n == 0 or pool.take() is sealer
        data = os.urandom(2 * RING_SIZE + n)
        version = new_version(root, keyfile, data[:10])
        job = SealJob(sealer, version.fd, version.hand_over())
        job.write(data[10:])
        assert job.finish() == len(data)
        pool.give_back(sealer)
        assert decrypt_with_age(version.path, keyfile) == data
        version.discard()
        resident = resident_in(sealer.process.pid, held)
        assert resident >= RING_SIZE, f"only {resident >> 20} MiB resident after a job"
        pool.trim_idle()
        wait_until(
            lambda: resident_in(sealer.process.pid, held) < MIB,
            f"{resident_in(sealer.process.pid, held) >> 20} MiB kept by an idle sealer",
        )
    assert not sealer.used
    pool.trim_idle()  # nothing to give back: no message either


def test_a_killed_sealer_is_an_error_not_a_hang(root: Path, keyfile: KeyFile) -> None:
    sealer = Sealer()
    try:
        version = new_version(root, keyfile, b"x" * 100)
        job = SealJob(sealer, version.fd, version.hand_over())
        sealer.process.send_signal(signal.SIGKILL)
        sealer.process.wait(10)
        with pytest.raises(SealerError) as caught:
            for _ in range(RING_SLOTS + 1):  # until a slot's acknowledgement is awaited
                job.write(b"y" * SLOT_SIZE)
            job.finish()
        assert caught.value.errno == 5
        assert "sealer process" in str(caught.value)
        assert "\n" not in str(caught.value)
        version.discard()
    finally:
        sealer.stop()


def test_a_sealer_exits_when_the_daemon_goes_away(root: Path, keyfile: KeyFile) -> None:
    """The daemon's end of the socket closing (as when it is killed) ends the sealer, which
    leaves the payload unfinished rather than sealing a file nobody asked for."""
    sealer = Sealer()
    version = new_version(root, keyfile, b"x" * 100)
    job = SealJob(sealer, version.fd, version.hand_over())
    job.write(b"y" * MIB)
    sealer.sock.close()
    assert not still_running({sealer.process.pid}, 10.0)
    sealer.process.wait()
    os.close(sealer.ring)
    with pytest.raises(pyrage.DecryptError):
        pyrage.decrypt(Path(version.path).read_bytes(), [keyfile_identity(keyfile)])
    version.discard()


def test_a_full_disk_comes_back_as_enospc(tmp_path: Path, keyfile: KeyFile) -> None:
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(small)], check=True)
    sealer = Sealer()
    try:
        create_meta_dirs(small)
        version = new_version(small, keyfile, b"x" * 100)
        try:
            job = SealJob(sealer, version.fd, version.hand_over())
            with pytest.raises(SealerError) as caught:
                for _ in range(40):  # more than the ring holds: some sends find the sealer gone
                    job.write(b"y" * (MIB // 2))
                job.finish()
        finally:
            version.discard()
        assert caught.value.errno == 28
        assert str(caught.value) == "[Errno 28] No space left on device"
    finally:
        sealer.stop()
        subprocess.run(["umount", str(small)], check=True)


def test_a_stream_whose_sealer_is_dead_fails_every_later_write(
    root: Path, keyfile: KeyFile, pool: SealerPool
) -> None:
    """The payload was handed over, so no later write can go anywhere: each one gets the same
    error (the kernel turns it into EIO) rather than a confusing second failure."""
    dead = pool.take()
    assert dead is not None
    dead.process.send_signal(signal.SIGKILL)
    dead.process.wait(10)
    pool.give_back(dead)  # idle: the next stream takes it
    stream = StreamWriter(NewVersion(root, [parse_recipient(keyfile.recipient)], AUTH), pool)
    stream.write(b"x" * INLINE_UNTIL)
    errors = []
    for _ in range(2):
        with pytest.raises(SealerError) as caught:
            stream.write(b"y" * MIB)
        errors.append(caught.value)
    assert errors[0] is errors[1]
    assert errors[0].errno == 5
    stream.discard()


def test_no_secret_reaches_the_sealer_command_line(pool: SealerPool) -> None:
    sealer = pool.take()
    assert sealer is not None
    cmdline = Path(f"/proc/{sealer.process.pid}/cmdline")
    deadline = time.monotonic() + 10
    while not cmdline.read_bytes() and time.monotonic() < deadline:  # empty until exec is done
        time.sleep(0.01)
    argv = cmdline.read_bytes().split(b"\0")[:-1]
    assert argv[-3] == b"cagefs.store.sealer_main"
    assert all(arg.isdigit() for arg in argv[-2:]), "only descriptor numbers follow"
    pool.give_back(sealer)


def test_the_pool_has_a_limit_and_stops_what_it_started() -> None:
    pool = SealerPool(limit=2)
    taken = [pool.take(), pool.take()]
    assert all(taken)
    assert pool.take() is None, "over the limit a stream seals in its own thread"
    pids = {sealer.process.pid for sealer in taken if sealer}
    for sealer in taken:
        assert sealer is not None
        pool.give_back(sealer)
    pool.close()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and still_running(pids, 0):
        time.sleep(0.05)
    assert not still_running(pids, 0)


def keyfile_identity(keyfile: KeyFile) -> pyrage.x25519.Identity:
    return pyrage.x25519.Identity.from_str(keyfile.path.read_text().split()[-1])


@pytest.mark.parametrize("limit", [0, 1], ids=["no-sealer-left", "sealer"])
def test_write_out_seals_a_whole_version(root: Path, keyfile: KeyFile, limit: int) -> None:
    """How staged files are written out at close: through a sealer, or in the calling thread
    when the pool has none to give (its limit reached): the same file either way."""
    pool = SealerPool(limit=limit)
    try:
        data = os.urandom(5 * MIB + 3)
        chunks = [data[i : i + CHUNK_SIZE] for i in range(0, len(data), CHUNK_SIZE)]
        version = NewVersion(root, [parse_recipient(keyfile.recipient)], AUTH)
        version = write_out(version, chunks, pool)
        assert decrypt_with_age(version.path, keyfile) == data
        version.discard()
    finally:
        pool.close()


def test_a_sealer_that_cannot_start_leaves_streams_to_threads(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A sealer that exits at once (here: a program that is not Python) is caught at start,
    where the pool can still answer None, never in the middle of a file."""
    monkeypatch.setattr(sealer_module.sys, "executable", "/bin/false")
    pool = SealerPool()
    try:
        assert pool.take() is None
        assert pool.take() is None
    finally:
        pool.close()
    warnings = [r.getMessage() for r in caplog.records if "sealer" in r.getMessage()]
    assert warnings == [
        "cannot start a sealer process ([Errno 5] the sealer process did not start): "
        "sealing in threads"
    ], "one warning, however many streams fall back"
