"""Key verbs on stores written through real mounts: an added recipient mounts the store and
opens every backing file with Go `age`; a removed one opens none after the rekey; nothing
changes keys while the store is mounted."""

import os
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from .helpers import Daemon, cagefs, decrypt_backing, one_line

FILES = {"a.txt": b"alpha\n", "empty": b"", "d/big.bin": bytes(range(256)) * 20_000}


def write_files(mnt: Path) -> None:
    for name, data in FILES.items():
        (mnt / name).parent.mkdir(parents=True, exist_ok=True)
        (mnt / name).write_bytes(data)
    (mnt / "link").symlink_to("a.txt")


def backing(store: Path) -> list[Path]:
    return sorted(p for p in store.rglob("*.age") if ".cagefs" not in p.relative_to(store).parts)


def keygen(path: Path) -> str:
    proc = cagefs("keygen", "-o", path)
    assert proc.returncode == 0, proc.stderr
    return proc.stderr.split("Public key: ")[-1].strip()


def test_an_added_recipient_mounts_the_store(
    tmp_path: Path, daemons: Callable[..., Daemon], store: Path, identity: Path
) -> None:
    colleague = tmp_path / "colleague.txt"
    recipient = keygen(colleague)
    first = daemons("auto")
    first.start()
    write_files(first.mnt)
    for verb in (["recipients", "add", store, recipient], ["rekey", store]):
        refused = cagefs(*verb, "-i", identity)
        assert refused.returncode == 5 and "mounted on" in one_line(refused.stderr)  # busy
    first.stop_clean()

    added = cagefs("recipients", "add", store, recipient, "-i", identity)
    assert added.returncode == 0, added.stderr
    for path in [*backing(store), store / ".cagefs/canary.age", store / ".cagefs/auth.age"]:
        decrypt_backing(path, colleague)  # fails the test if Go age cannot
    theirs = Daemon(store, tmp_path / "mnt2", colleague, tmp_path / "theirs.log")
    (tmp_path / "mnt2").mkdir()
    try:
        theirs.start()
        for name, data in FILES.items():
            assert (theirs.mnt / name).read_bytes() == data, name
        assert (theirs.mnt / "link").readlink() == Path("a.txt")
        (theirs.mnt / "from-colleague").write_bytes(b"hello")
        theirs.stop_clean()
    finally:
        problems = theirs.close()
    assert not problems, problems
    assert decrypt_backing(store / "from-colleague.age", identity) == b"hello"


def test_a_removed_recipient_opens_nothing_after_the_rekey(
    tmp_path: Path, daemons: Callable[..., Daemon], store: Path, identity: Path
) -> None:
    colleague = tmp_path / "colleague.txt"
    recipient = keygen(colleague)
    assert cagefs("recipients", "add", store, recipient, "-i", identity).returncode == 0
    daemon = daemons("stream")
    daemon.start()
    write_files(daemon.mnt)
    daemon.stop_clean()
    for path in backing(store):
        decrypt_backing(path, colleague)

    removed = cagefs("recipients", "remove", store, recipient, "-i", identity)
    assert removed.returncode == 0, removed.stderr
    for path in [*backing(store), store / ".cagefs/canary.age", store / ".cagefs/auth.age"]:
        with pytest.raises(AssertionError, match="no identity matched"):
            decrypt_backing(path, colleague)
    daemon.start()
    for name, data in FILES.items():
        assert (daemon.mnt / name).read_bytes() == data, name
    daemon.stop_clean()

    mnt = tmp_path / "mnt3"
    mnt.mkdir()
    proc = cagefs("mount", store, mnt, "-i", colleague)
    assert proc.returncode == 3 and "cannot read store" in one_line(proc.stderr)  # wrong key


def test_verify_is_safe_while_the_mount_writes(
    daemons: Callable[..., Daemon], store: Path, identity: Path
) -> None:
    daemon = daemons("auto")
    daemon.start()
    stop = threading.Event()

    def churn() -> None:
        i = 0
        while not stop.is_set():
            path = daemon.mnt / f"churn{i % 20}"
            path.write_bytes(os.urandom(1000 + i))
            if i % 3 == 0:
                path.rename(daemon.mnt / f"moved{i % 20}")
            if i % 5 == 0:
                path.unlink(missing_ok=True)
            i += 1

    for i in range(50):
        (daemon.mnt / f"f{i}").write_bytes(os.urandom(70_000))
    writer = threading.Thread(target=churn)
    writer.start()
    try:
        for _ in range(3):
            proc = cagefs("verify", store, "-i", identity)
            assert proc.returncode == 0, proc.stdout + proc.stderr
    finally:
        stop.set()
        writer.join()
    assert (daemon.mnt / "f7").stat().st_size == 70_000
    daemon.stop_clean()


class EncryptOnlyDaemon(Daemon):
    """A mount with no identity at all: only config.toml's recipients and the auth key."""

    def command(self) -> list[str]:
        cmd = [sys.executable, "-m", "cagefs", "mount", str(self.store), str(self.mnt), "-f"]
        return [*cmd, "--encrypt-only", *self.options]


def test_an_encrypt_only_mount_writes_what_it_cannot_read(
    tmp_path: Path, daemons: Callable[..., Daemon], store: Path, identity: Path
) -> None:
    full = daemons("auto")
    full.start()
    (full.mnt / "old.txt").write_bytes(b"written with the identity\n")
    full.stop_clean()
    key = tmp_path / "auth.key"
    exported = cagefs("recipients", "export-auth-key", store, "-o", key, "-i", identity)
    assert exported.returncode == 0, exported.stderr
    assert key.stat().st_mode & 0o777 == 0o600

    mnt = tmp_path / "drop"
    mnt.mkdir()
    drop = EncryptOnlyDaemon(
        store, mnt, identity, tmp_path / "drop.log", "stream", options=["--auth-key-file", str(key)]
    )
    big = os.urandom(5 << 20)
    try:
        drop.start()
        assert (mnt / "old.txt").stat().st_size == 26  # tree and sizes are listed
        for attempt in (
            lambda: (mnt / "old.txt").read_bytes(),
            lambda: (mnt / "old.txt").open("ab").write(b"more"),
            lambda: (mnt / "old.txt").write_bytes(b"replaced"),
            lambda: os.truncate(mnt / "old.txt", 0),
        ):
            with pytest.raises(PermissionError):
                attempt()
        (mnt / "backup").mkdir()
        with (mnt / "backup/big.bin").open("wb") as f:  # streamed, 1 MiB at a time
            for i in range(0, len(big), 1 << 20):
                f.write(big[i : i + (1 << 20)])
        (mnt / "small.txt").write_bytes(b"small\n")
        assert (mnt / "backup/big.bin").stat().st_size == len(big)
        with pytest.raises(PermissionError):
            (mnt / "small.txt").read_bytes()
        drop.stop_clean()
    finally:
        problems = drop.close()
    assert not problems, problems
    assert decrypt_backing(store / "backup/big.bin.age", identity) == big
    verified = cagefs("verify", store, "-i", identity)
    assert verified.returncode == 0, verified.stdout + verified.stderr  # proofs are the store's
    full.start()
    assert (full.mnt / "small.txt").read_bytes() == b"small\n"
    assert (full.mnt / "old.txt").read_bytes() == b"written with the identity\n"
    full.stop_clean()


def test_encrypt_only_refusals(tmp_path: Path, store: Path, identity: Path) -> None:
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    other = tmp_path / "other"
    assert cagefs("init", other, "--identity", identity).returncode == 0
    other_key = tmp_path / "other.key"
    assert (
        cagefs("recipients", "export-auth-key", other, "-o", other_key, "-i", identity).returncode
        == 0
    )
    cases = [
        (["--encrypt-only"], "needs the store's authentication key", 2),
        (["--encrypt-only", "-i", identity], "takes no identity", 2),
        (["--encrypt-only", "--auth-key-file", other_key], "not the one of store", 1),
        (["--encrypt-only", "--auth-key-file", identity], "not a cagefs authentication key", 1),
        (["--auth-key-file", other_key, "-i", identity], "for --encrypt-only mounts", 2),
    ]
    for args, expected, code in cases:
        proc = cagefs("mount", store, mnt, *args)
        assert proc.returncode == code, (args, proc.stderr)
        assert expected in one_line(proc.stderr), args
    again = cagefs("recipients", "export-auth-key", other, "-o", other_key, "-i", identity)
    assert again.returncode == 1 and "File exists" in one_line(again.stderr)
