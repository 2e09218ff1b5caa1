"""Stores whose recipients are not plain age keys: a post-quantum hybrid store, and a mixed store
where some people use ssh keys (one passphrase-protected) and some age keys; the mount is
unlocked with an ssh key. Files written through the mount must open for each recipient alone.
"""

import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from .helpers import Daemon, cagefs, run

DATA = bytes(range(256)) * 1000


@pytest.fixture
def mount_store(tmp_path: Path) -> Iterator[Callable[..., Daemon]]:
    """Init a store for these recipients, mount it with `identity`; always torn down."""
    made: list[Daemon] = []

    def make(identity: Path, recipients: list[str], options: list[str]) -> Daemon:
        store, mnt = tmp_path / "store", tmp_path / "mnt"
        mnt.mkdir()
        extra = [a for r in recipients for a in ("-r", r)]
        proc = cagefs("init", store, "--identity", identity, *extra)
        assert proc.returncode == 0, proc.stderr
        daemon = Daemon(store, mnt, identity, tmp_path / "daemon.log", options=options)
        made.append(daemon)
        daemon.start()
        return daemon

    yield make
    problems = [problem for daemon in made for problem in daemon.close()]
    if problems:
        pytest.fail("; ".join(problems))


def stanza_types(path: Path) -> list[str]:
    lines = path.read_bytes().split(b"\n---")[0].split(b"\n")
    return [line.split()[1].decode() for line in lines if line.startswith(b"-> ")]


def cagefs_decrypt(path: Path, *identity_args: object) -> bytes:
    argv = [sys.executable, "-m", "cagefs", "decrypt", *map(str, identity_args), str(path)]
    proc = subprocess.run(argv, capture_output=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_hybrid_store(tmp_path: Path, mount_store: Callable[..., Daemon]) -> None:
    key = tmp_path / "pq.key"
    assert cagefs("keygen", "--pq", "-o", key).returncode == 0
    daemon = mount_store(key, [], [])
    (daemon.mnt / "doc.bin").write_bytes(DATA)
    assert (daemon.mnt / "doc.bin").read_bytes() == DATA
    daemon.stop_clean()
    backing = daemon.store / "doc.bin.age"
    assert stanza_types(backing) == ["mlkem768x25519", "cagefs-auth"]
    assert cagefs_decrypt(backing, "-i", key) == DATA
    daemon.start()
    assert (daemon.mnt / "doc.bin").read_bytes() == DATA


def test_mixed_ssh_and_age_store(tmp_path: Path, mount_store: Callable[..., Daemon]) -> None:
    ed = tmp_path / "id_ed25519"
    rsa = tmp_path / "id_rsa"
    run("ssh-keygen", "-q", "-t", "ed25519", "-N", "store pass", "-f", ed)
    run("ssh-keygen", "-q", "-t", "rsa", "-b", "3072", "-N", "", "-f", rsa)
    age_key = tmp_path / "age.key"
    run("age-keygen", "-o", age_key)
    age_recipient = run("age-keygen", "-y", age_key).decode().strip()
    passfile = tmp_path / "passfile"
    passfile.write_text("store pass\n")

    recipients = [ed.with_suffix(".pub").read_text().strip(), age_recipient]
    daemon = mount_store(rsa, recipients, [])
    (daemon.mnt / "shared.bin").write_bytes(DATA)
    daemon.stop_clean()
    backing = daemon.store / "shared.bin.age"
    assert stanza_types(backing) == ["ssh-rsa", "ssh-ed25519", "X25519", "cagefs-auth"]
    assert run("age", "-d", "-i", rsa, backing) == DATA
    assert run("age", "-d", "-i", age_key, backing) == DATA
    assert cagefs_decrypt(backing, "-i", ed, "--passfile", passfile) == DATA
