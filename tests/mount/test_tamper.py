"""Tamper evidence through a real mount: files cagefs did not write are refused with EIO.

The attacker here can write the store but holds no key: they plant files with the Go `age -r`
CLI (the recipients are in config.toml), or, as a reader who knows file keys would, rewrite a
genuine file's header with its age MAC made valid again. Every file the mount writes, by every
strategy, must carry a valid proof and stay readable by Go `age -d` and pyrage.
"""

import errno
import io
import os
import re
import subprocess
from collections.abc import Callable
from pathlib import Path

import pyrage
import pytest

from cagefs.age.header import Stanza, encode_header, read_header
from cagefs.age.keys import parse_identity_file
from cagefs.age.recipients import unwrap_file_key
from cagefs.errors import ExitCode
from cagefs.store.auth import STANZA_TYPE
from cagefs.store.keyring import CANARY_TEXT, write_age_file
from cagefs.store.layout import AUTH_FILE, CANARY_FILE

from .helpers import Daemon, cagefs, decrypt_backing, one_line, sh

Change = Callable[[list[Stanza]], list[Stanza]]


def store_recipient(store: Path) -> str:
    """What an attacker reads: the first recipient in the store's config.toml."""
    found = re.search(r"age1[a-z0-9]+", (store / ".cagefs/config.toml").read_text())
    assert found
    return found.group(0)


def plant(store: Path, name: str, plaintext: bytes) -> None:
    backing = store / f"{name}.age"
    subprocess.run(
        ["age", "-r", store_recipient(store), "-o", str(backing)], input=plaintext, check=True
    )


def rewrite_header(backing: Path, identity: Path, change: Change) -> None:
    """Change a backing file's stanzas, re-MAC'd with its file key (a key holder's forgery)."""
    data = backing.read_bytes()
    header = read_header(io.BytesIO(data))
    keys = parse_identity_file(identity.read_text(), str(identity))
    file_key = unwrap_file_key(header, keys)
    backing.write_bytes(
        encode_header(change(list(header.stanzas)), file_key) + data[header.length :]
    )


def proof_stanzas(backing: Path) -> list[Stanza]:
    return [
        s for s in read_header(io.BytesIO(backing.read_bytes())).stanzas if s.type == STANZA_TYPE
    ]


def read_errno(path: Path) -> int | None:
    try:
        path.read_bytes()
    except OSError as exc:
        return exc.errno
    return None


def verify(store: Path, identity: Path, *args: str) -> subprocess.CompletedProcess:
    return cagefs("verify", store, "-i", identity, *args)


def test_every_file_the_mount_writes_carries_a_valid_proof(mounted: Daemon) -> None:
    """Each strategy: streamed, staged, edited in place, appended, truncated, copied, renamed
    (file and directory). Afterwards `cagefs verify` finds nothing wrong, and Go `age -d` and
    pyrage read every backing file."""
    mnt = mounted.mnt
    sh(
        "head -c 3000000 /dev/urandom > big.bin; echo hello > small.txt; mkdir -p d/e;"
        "head -c 200000 /dev/urandom > d/e/edit.bin; cp big.bin d/copy.bin;"
        "echo more >> small.txt; truncate -s 70000 d/copy.bin;"
        "mv small.txt d/e/moved.txt; mv d renamed-dir; : > empty",
        mnt,
    )
    with open(mnt / "renamed-dir/e/edit.bin", "r+b") as f:  # an edit of a published file
        f.seek(100_000)
        f.write(b"edited in place")
    with open(mnt / "renamed-dir/e/edit.bin", "rb") as f:
        edited = f.read()
    mounted.assert_store_matches()  # clean unmount, then Go `age -d` of every backing file

    checked = verify(mounted.store, mounted.identity)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "5 files checked, 0 with problems" in checked.stderr
    identity = pyrage.x25519.Identity.from_str(
        next(line for line in mounted.identity.read_text().splitlines() if line.startswith("AGE-"))
    )
    for backing in mounted.store.rglob("*.age"):
        if ".cagefs" in backing.parts:
            continue
        assert len(proof_stanzas(backing)) == 1, backing
        plaintext = pyrage.decrypt(backing.read_bytes(), [identity])
        assert plaintext == decrypt_backing(backing, mounted.identity), backing
    assert decrypt_backing(mounted.store / "renamed-dir/e/edit.bin.age", mounted.identity) == edited


def test_planted_file_is_eio_with_a_log_line_and_the_rest_is_served(
    daemons: Callable[..., Daemon],
) -> None:
    daemon = daemons()
    daemon.start()
    (daemon.mnt / "genuine.txt").write_bytes(b"genuine\n")
    plant(daemon.store, "forged", b"attacker content\n")
    assert read_errno(daemon.mnt / "forged") == errno.EIO
    assert os.stat(daemon.mnt / "forged").st_size == len(b"attacker content\n")  # names/sizes
    assert (daemon.mnt / "genuine.txt").read_bytes() == b"genuine\n"
    (daemon.mnt / "after.txt").write_bytes(b"still writable\n")
    assert (daemon.mnt / "after.txt").read_bytes() == b"still writable\n"
    log = daemon.log_text()
    refusals = [line for line in log.splitlines() if "forged" in line and "refused" in line]
    assert len(refusals) == 1, log[-2000:]
    assert "untagged" in refusals[0]
    assert "attacker" not in log
    (daemon.mnt / "forged").unlink()  # what the user does about it: remove, then write anew
    (daemon.mnt / "forged").write_bytes(b"mine\n")
    assert (daemon.mnt / "forged").read_bytes() == b"mine\n"


@pytest.mark.parametrize("how", ["removed", "altered", "copied from another file"])
def test_a_changed_proof_is_eio(daemons: Callable[..., Daemon], how: str) -> None:
    daemon = daemons()
    daemon.start()
    (daemon.mnt / "victim.txt").write_bytes(b"victim\n")
    (daemon.mnt / "donor.txt").write_bytes(b"donor\n")
    (daemon.mnt / "intact.txt").write_bytes(b"intact\n")
    daemon.stop_clean()
    victim = daemon.store / "victim.txt.age"
    donor_proof = proof_stanzas(daemon.store / "donor.txt.age")

    def change(stanzas: list[Stanza]) -> list[Stanza]:
        kept = [s for s in stanzas if s.type != STANZA_TYPE]
        if how == "altered":
            (proof,) = [s for s in stanzas if s.type == STANZA_TYPE]
            return [*kept, Stanza(proof.type, proof.args, bytes(len(proof.body)))]
        return kept + (donor_proof if how == "copied from another file" else [])

    rewrite_header(victim, daemon.identity, change)
    assert decrypt_backing(victim, daemon.identity) == b"victim\n"  # stock age still reads it
    daemon.start()
    assert read_errno(daemon.mnt / "victim.txt") == errno.EIO
    assert (daemon.mnt / "intact.txt").read_bytes() == b"intact\n"
    assert (daemon.mnt / "donor.txt").read_bytes() == b"donor\n"
    assert "victim.txt: refused" in daemon.log_text()


def make_old(store: Path, identity: Path) -> None:
    """Turn a fresh store into one made before tamper evidence: no auth key, nothing tagged."""
    keys = parse_identity_file(identity.read_text(), str(identity))
    (store / AUTH_FILE).unlink()
    write_age_file(store, CANARY_FILE, CANARY_TEXT, [keys[0].recipient()])
    (store / "sub").mkdir()
    for name in ("old.txt", "sub/older.txt"):
        plant(store, name, f"{name} from before\n".encode())


def test_old_store_is_served_only_read_only_until_upgraded(
    daemons: Callable[..., Daemon], store: Path, identity: Path, tmp_path: Path
) -> None:
    make_old(store, identity)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    refused = cagefs("mount", store, mnt, "-i", identity)
    assert refused.returncode == 1
    assert "cagefs verify --upgrade" in one_line(refused.stderr)
    writable = cagefs("mount", store, mnt, "-i", identity, "--accept-untagged")
    assert writable.returncode == 2  # usage
    assert "-o ro" in one_line(writable.stderr)

    migrating = daemons(options=["-o", "ro", "--accept-untagged"])
    migrating.start()
    assert (migrating.mnt / "sub/older.txt").read_bytes() == b"sub/older.txt from before\n"
    busy = verify(store, identity, "--upgrade")  # rewrites files: never beside a daemon (I10)
    assert busy.returncode != 0
    assert f"in use: mounted on {migrating.mnt}" in one_line(busy.stderr)
    assert verify(store, identity).returncode == ExitCode.DAMAGE  # a plain verify only reads
    migrating.stop_clean()

    upgraded = verify(store, identity, "--upgrade")
    assert upgraded.returncode == 0, upgraded.stdout + upgraded.stderr
    daemon = daemons()
    daemon.start()
    assert (daemon.mnt / "old.txt").read_bytes() == b"old.txt from before\n"
    (daemon.mnt / "sub/older.txt").write_bytes(b"rewritten\n")
    plant(store, "late", b"planted after the upgrade\n")
    assert read_errno(daemon.mnt / "late") == errno.EIO
    daemon.stop_clean()
    assert decrypt_backing(store / "sub/older.txt.age", identity) == b"rewritten\n"


def test_accept_untagged_still_refuses_forged_proofs(
    daemons: Callable[..., Daemon], store: Path, identity: Path
) -> None:
    """The migration option lets untagged files through, never a proof that is wrong."""
    writer = daemons()
    writer.start()
    (writer.mnt / "genuine.txt").write_bytes(b"genuine\n")
    writer.stop_clean()
    plant(store, "untagged", b"old file\n")
    rewrite_header(
        store / "genuine.txt.age",
        identity,
        lambda st: [Stanza(s.type, s.args, bytes(32)) if s.type == STANZA_TYPE else s for s in st],
    )
    reader = daemons(options=["-o", "ro", "--accept-untagged"])
    reader.start()
    assert (reader.mnt / "untagged").read_bytes() == b"old file\n"
    assert read_errno(reader.mnt / "genuine.txt") == errno.EIO
    reader.stop_clean()  # before teardown: it checks the daemons in order, on one mount point
