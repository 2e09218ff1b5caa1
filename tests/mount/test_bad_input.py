"""I6 and I9: damaged or foreign data in the store, and every way a mount must be refused.

Backing files here are made by the Go `age` CLI and then given the store's proof of origin, as
`cagefs verify --upgrade` does (tests/mount/test_tamper.py shows that untagged ones are refused),
so these tests also show that cagefs serves stock age files it did not encrypt.
"""

import errno
import os
import random
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from cagefs.age.keys import parse_identity_file
from cagefs.store import open_store
from cagefs.store.verify import TAGGED, check_file

from .helpers import CHUNK, CHUNK_CT, Daemon, DaemonExited, cagefs, is_mounted, one_line, read_all

DATA = random.Random(5).randbytes(4 * CHUNK + 1000)  # five chunks, the last one short


def age_encrypt(data: bytes, out: Path, identity: Path) -> None:
    recipient = subprocess.run(
        ["age-keygen", "-y", str(identity)], capture_output=True, check=True, text=True
    ).stdout.strip()
    subprocess.run(["age", "-e", "-r", recipient, "-o", str(out)], input=data, check=True)
    store = open_store(out.parent, parse_identity_file(identity.read_text(), str(identity)))
    assert check_file(store, out.name, store.auth, upgrade=True) == TAGGED


def payload_start(path: Path) -> int:
    """Where the 16-byte nonce begins: just after the header's `--- MAC` line."""
    raw = path.read_bytes()
    mac_line = raw.index(b"\n--- ") + 1
    return raw.index(b"\n", mac_line) + 1


def chunk_offset(path: Path, index: int) -> int:
    return payload_start(path) + 16 + index * CHUNK_CT


def flip_byte(path: Path, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0x40]))


def expect_eio(call: Callable[[], object]) -> None:
    with pytest.raises(OSError) as exc:
        call()
    assert exc.value.errno == errno.EIO, errno.errorcode.get(exc.value.errno)


@pytest.fixture
def auto(daemons: Callable[..., Daemon]) -> Daemon:
    return daemons("auto")


def test_flipped_byte_fails_only_that_chunk(auto: Daemon) -> None:
    age_encrypt(DATA, auto.store / "bad.bin.age", auto.identity)
    age_encrypt(DATA, auto.store / "good.bin.age", auto.identity)
    flip_byte(auto.store / "bad.bin.age", chunk_offset(auto.store / "bad.bin.age", 2) + 100)
    auto.start()
    bad = auto.mnt / "bad.bin"
    assert os.stat(bad).st_size == len(DATA), "the size comes from the ciphertext length"
    with open(bad, "rb", buffering=0) as f:
        for chunk in (0, 1, 3, 4):
            assert os.pread(f.fileno(), 4096, chunk * CHUNK) == DATA[chunk * CHUNK :][:4096]
        expect_eio(lambda: os.pread(f.fileno(), 4096, 2 * CHUNK + 5000))
        expect_eio(lambda: read_all(f.fileno()))
        assert os.pread(f.fileno(), 100, 4 * CHUNK) == DATA[4 * CHUNK :][:100]
    assert (auto.mnt / "good.bin").read_bytes() == DATA
    assert auto.proc is not None and auto.proc.poll() is None, "the daemon must stay up"
    assert "bad.bin" in auto.log_text(), "the log must name the damaged file"
    assert DATA[2 * CHUNK : 2 * CHUNK + 32].hex() not in auto.log_text()


@pytest.mark.parametrize("cut", ["mid-last-chunk", "whole-last-chunk", "inside-header"])
def test_truncated_backing_file_is_eio(auto: Daemon, cut: str) -> None:
    path = auto.store / "cut.bin.age"
    age_encrypt(DATA, path, auto.identity)
    age_encrypt(DATA, auto.store / "good.bin.age", auto.identity)
    sizes = {
        "mid-last-chunk": chunk_offset(path, 4) + 500,
        "whole-last-chunk": chunk_offset(path, 4),
        "inside-header": payload_start(path) // 2,
    }
    os.truncate(path, sizes[cut])
    auto.start()
    got = b""
    with pytest.raises(OSError) as exc, open(auto.mnt / "cut.bin", "rb", buffering=0) as f:
        while block := f.read(CHUNK):
            got += block
    assert exc.value.errno == errno.EIO, errno.errorcode.get(exc.value.errno)
    assert DATA.startswith(got), "whatever was returned before the error must be the real data"
    assert (auto.mnt / "good.bin").read_bytes() == DATA
    assert auto.proc is not None and auto.proc.poll() is None


def test_foreign_and_garbage_files(auto: Daemon) -> None:
    (auto.store / "notes.txt").write_text("not ours\n")
    (auto.store / "x.age").write_bytes(random.Random(9).randbytes(5000))
    (auto.store / "empty.age").write_bytes(b"")
    age_encrypt(DATA, auto.store / "good.bin.age", auto.identity)
    auto.start()
    names = os.listdir(auto.mnt)
    assert "notes.txt" not in names and not (auto.mnt / "notes.txt").exists()
    assert ".cagefs" not in names
    run_ls = subprocess.run(["ls", "-la", str(auto.mnt)], capture_output=True, check=False)
    assert b"good.bin" in run_ls.stdout
    for name in ("x", "empty"):
        if name in names:  # shown, then reading it must fail cleanly
            expect_eio(lambda name=name: (auto.mnt / name).read_bytes())
    assert (auto.mnt / "good.bin").read_bytes() == DATA
    assert auto.proc is not None and auto.proc.poll() is None
    auto.stop_clean()
    assert (auto.store / "notes.txt").read_text() == "not ours\n", "foreign files are left alone"
    assert (auto.store / "x.age").read_bytes() == random.Random(9).randbytes(5000)


def refused(daemon: Daemon, busy: bool = False) -> str:
    """Start must fail before the mount is ready, with one line on stderr and mount nothing."""
    with pytest.raises(DaemonExited) as exc:
        daemon.start()
    assert exc.value.rc != 0
    assert is_mounted(daemon.mnt) == busy
    return one_line(exc.value.log)


def test_wrong_identity_refused(auto: Daemon, tmp_path: Path) -> None:
    other = tmp_path / "other.key"
    assert cagefs("keygen", "-o", other).returncode == 0
    auto.identity = other
    line = refused(auto)
    assert "identity" in line.lower() or "key" in line.lower(), line


def test_missing_store_refused(auto: Daemon, tmp_path: Path) -> None:
    auto.store = tmp_path / "no-such-store"
    refused(auto)


def test_store_not_initialised_refused(auto: Daemon, tmp_path: Path) -> None:
    auto.store = tmp_path / "plain-dir"
    auto.store.mkdir()
    refused(auto)


def test_missing_mountpoint_refused(auto: Daemon) -> None:
    auto.mnt.rmdir()
    refused(auto)
    auto.mnt.mkdir()


def test_non_empty_mountpoint_refused(auto: Daemon) -> None:
    (auto.mnt / "something").write_text("here\n")
    refused(auto)
    (auto.mnt / "something").unlink()


def test_busy_mountpoint_refused(auto: Daemon, daemons: Callable[..., Daemon]) -> None:
    auto.start()
    second = daemons("auto", mnt=auto.mnt)
    line = refused(second, busy=True)
    assert "busy" in line or "mounted" in line, line
    assert (auto.mnt / "probe").write_bytes(b"ok") == 2, "the existing mount still works"


def test_unknown_strategy_refused(auto: Daemon) -> None:
    auto.strategy = None
    auto.env = {"CAGEFS_STRATEGY": "bogus"}
    refused(auto)
