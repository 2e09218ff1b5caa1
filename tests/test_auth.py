"""Tamper evidence without a mount: the proof stanza, what it binds, `cagefs verify`, upgrades.

Files are built with the engine where a test needs the file key (to re-MAC a header the way
only a key holder could, so that nothing but the proof can catch the change), and planted with
the Go `age` CLI where a test plays the attacker who only knows the recipients.
"""

import io
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pyrage
import pytest
from conftest import KeyFile
from support import cagefs, decrypt_bytes, encrypt_bytes

from cagefs.age.errors import AgeError
from cagefs.age.file import open_file, start_file
from cagefs.age.header import Stanza, encode_header, read_header
from cagefs.age.recipients import unwrap_file_key
from cagefs.age.scrypt import ScryptRecipient
from cagefs.errors import CageError, ExitCode
from cagefs.store import init_store, open_store
from cagefs.store.auth import STANZA_TYPE, AuthKey, FileAuth, Kind, Proof, UntrustedFileError
from cagefs.store.keyring import CANARY_TEXT, save_auth_key, write_age_file
from cagefs.store.layout import AUTH_FILE, CANARY_FILE, TMP_DIR

Change = Callable[[list[Stanza], bytes], list[Stanza]]


def tagged_file(keyfile: KeyFile, plaintext: bytes, auth: AuthKey) -> bytes:
    out = bytearray()
    writer = start_file(out.extend, [keyfile.identity.recipient()], FileAuth(auth).tag)
    writer.write(plaintext)
    writer.close()
    return bytes(out)


def rewrite_header(data: bytes, keyfile: KeyFile, change: Change) -> bytes:
    """The same file with its stanzas changed and the age header MAC made valid again: what a
    holder of the file key (not of the authentication key) could do."""
    header = read_header(io.BytesIO(data))
    file_key = unwrap_file_key(header, [keyfile.identity])
    return encode_header(change(list(header.stanzas), file_key), file_key) + data[header.length :]


def proof_of(data: bytes, keyfile: KeyFile, auth: AuthKey, kind: Kind = Kind.FILE) -> Proof:
    header = read_header(io.BytesIO(data))
    return auth.proof(header, unwrap_file_key(header, [keyfile.identity]), kind)


def proofs(stanzas: list[Stanza]) -> list[Stanza]:
    return [s for s in stanzas if s.type == STANZA_TYPE]


def without_proof(stanzas: list[Stanza], file_key: bytes) -> list[Stanza]:
    return [s for s in stanzas if s.type != STANZA_TYPE]


def go_age_decrypt(data: bytes, keyfile: KeyFile) -> bytes:
    proc = subprocess.run(
        ["age", "-d", "-i", str(keyfile.path)], input=data, capture_output=True, check=False
    )
    assert proc.returncode == 0, proc.stderr.decode()
    return proc.stdout


def pyrage_identity(keyfile: KeyFile) -> pyrage.x25519.Identity:
    return pyrage.x25519.Identity.from_str(str(keyfile.identity))


# --- the proof stanza ------------------------------------------------------------------------


def test_tagged_file_decrypts_with_go_age_pyrage_and_cagefs(keyfile: KeyFile) -> None:
    auth = AuthKey.generate()
    plaintext = os.urandom(200_000)
    data = tagged_file(keyfile, plaintext, auth)
    assert len(proofs(list(read_header(io.BytesIO(data)).stanzas))) == 1
    assert go_age_decrypt(data, keyfile) == plaintext
    assert pyrage.decrypt(data, [pyrage_identity(keyfile)]) == plaintext
    assert decrypt_bytes(data, [keyfile.identity]) == plaintext
    assert proof_of(data, keyfile, auth) is Proof.VALID


@pytest.mark.parametrize(
    ("name", "change", "expected"),
    [
        ("removed", without_proof, Proof.MISSING),
        (
            "altered",
            lambda st, fk: [
                Stanza(s.type, s.args, bytes([s.body[0] ^ 1]) + s.body[1:])
                if s.type == STANZA_TYPE
                else s
                for s in st
            ],
            Proof.BAD,
        ),
        ("doubled", lambda st, fk: st + proofs(st), Proof.BAD),
        (
            "recipient added",
            lambda st, fk: [*st[:-1], Stanza("X25519", ("c29tZXRoaW5n",), b"x" * 32), st[-1]],
            Proof.BAD,
        ),
        (
            "another key id",
            lambda st, fk: [
                Stanza(s.type, ("AAAAAAAAAAA",), s.body) if s.type == STANZA_TYPE else s for s in st
            ],
            Proof.OTHER_KEY,
        ),
    ],
)
def test_a_changed_proof_is_refused(
    keyfile: KeyFile, name: str, change: Change, expected: Proof
) -> None:
    auth = AuthKey.generate()
    changed = rewrite_header(tagged_file(keyfile, b"genuine\n", auth), keyfile, change)
    assert proof_of(changed, keyfile, auth) is expected, name
    assert go_age_decrypt(changed, keyfile) == b"genuine\n"  # still a valid age file


def test_a_proof_copied_from_another_genuine_file_is_refused(keyfile: KeyFile) -> None:
    auth = AuthKey.generate()
    donor = read_header(io.BytesIO(tagged_file(keyfile, b"genuine\n", auth))).stanzas
    planted = encrypt_bytes([keyfile.identity.recipient()], b"attacker content\n")
    forged = rewrite_header(planted, keyfile, lambda st, fk: st + proofs(list(donor)))
    assert proof_of(forged, keyfile, auth) is Proof.BAD


def test_a_proof_for_another_kind_or_key_is_refused(keyfile: KeyFile) -> None:
    auth = AuthKey.generate()
    data = tagged_file(keyfile, b"genuine\n", auth)
    assert proof_of(data, keyfile, auth, Kind.JOURNAL) is Proof.BAD
    assert proof_of(data, keyfile, AuthKey.generate()) is Proof.OTHER_KEY


def test_open_file_check_refuses_and_accepts_untagged_only_when_asked(
    keyfile: KeyFile, tmp_path: Path
) -> None:
    auth = AuthKey.generate()
    path = tmp_path / "planted.age"
    path.write_bytes(encrypt_bytes([keyfile.identity.recipient()], b"planted\n"))
    fd = os.open(path, os.O_RDONLY)
    try:
        with pytest.raises(UntrustedFileError, match="untagged"):
            open_file(fd, [keyfile.identity], FileAuth(auth).check)
        accepted = open_file(fd, [keyfile.identity], FileAuth(auth, accept_untagged=True).check)
        assert accepted.reader.read(0, 100) == b"planted\n"
    finally:
        os.close(fd)


def test_a_passphrase_file_gets_no_extra_stanza() -> None:
    """age refuses any stanza beside an scrypt one (Go age: "must be the only one")."""
    with pytest.raises(AgeError, match="passphrase"):
        tag = FileAuth(AuthKey.generate()).tag
        start_file(bytearray().extend, [ScryptRecipient(b"pw", 10)], tag)


def test_auth_key_text_round_trips_and_junk_is_refused() -> None:
    auth = AuthKey.generate()
    assert AuthKey.from_text(auth.text()) == auth
    assert AuthKey.from_text(auth.text()).key_id == auth.key_id
    for junk in (b"", auth.text()[:-1], b"AGE-SECRET-KEY-1\n", auth.text().replace(b"v1", b"v2")):
        with pytest.raises(CageError):
            AuthKey.from_text(junk)
    assert auth.secret.hex() not in repr(auth)


# --- stores: init, open, verify ----------------------------------------------------------------


def store_with_files(tmp_path: Path, keyfile: KeyFile, files: dict[str, bytes]) -> Path:
    """A current store whose files were written as the mount writes them (tagged)."""
    root = tmp_path / "store"
    store = init_store(root, identities=[keyfile.identity])
    assert store.auth is not None
    for name, plaintext in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / f"{name}.age").write_bytes(tagged_file(keyfile, plaintext, store.auth))
    return root


def old_store(tmp_path: Path, keyfile: KeyFile, files: dict[str, bytes]) -> Path:
    """A store as cagefs made them before tamper evidence: no auth.age, nothing tagged."""
    root = tmp_path / "store"
    init_store(root, identities=[keyfile.identity])
    (root / AUTH_FILE).unlink()
    write_age_file(root, CANARY_FILE, CANARY_TEXT, [keyfile.identity.recipient()])
    for name, plaintext in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / f"{name}.age").write_bytes(encrypt_bytes([keyfile.identity.recipient()], plaintext))
    return root


def plant_with_go_age(root: Path, name: str, plaintext: bytes, recipient: str) -> None:
    subprocess.run(
        ["age", "-r", recipient, "-o", str(root / f"{name}.age")], input=plaintext, check=True
    )


def verify(root: Path, keyfile: KeyFile, *args: str) -> subprocess.CompletedProcess:
    return cagefs("verify", root, "-i", keyfile.path, *args)


def test_init_makes_an_auth_key_that_tags_the_canary(tmp_path: Path, keyfile: KeyFile) -> None:
    root = store_with_files(tmp_path, keyfile, {})
    store = open_store(root, [keyfile.identity])
    assert store.auth is not None
    canary = (root / CANARY_FILE).read_bytes()
    assert proof_of(canary, keyfile, store.auth, Kind.CANARY) is Proof.VALID
    assert go_age_decrypt((root / AUTH_FILE).read_bytes(), keyfile).startswith(b"cagefs-auth")


def test_a_replaced_auth_key_is_refused_at_open(tmp_path: Path, keyfile: KeyFile) -> None:
    """Someone with write access swaps in an auth key of their own: the canary gives it away."""
    root = store_with_files(tmp_path, keyfile, {})
    save_auth_key(root, AuthKey.generate(), [keyfile.identity.recipient()])
    with pytest.raises(CageError, match="does not belong to this store"):
        open_store(root, [keyfile.identity])
    proc = verify(root, keyfile)
    assert proc.returncode == 1
    assert "does not belong to this store" in proc.stderr.decode()


def test_verify_lists_untagged_forged_and_damaged_files(tmp_path: Path, keyfile: KeyFile) -> None:
    root = store_with_files(tmp_path, keyfile, {"ok": b"fine\n", "d/ok2": b"fine too\n"})
    assert verify(root, keyfile).returncode == 0
    plant_with_go_age(root, "d/planted", b"attacker\n", keyfile.recipient)
    forged = rewrite_header(
        (root / "ok.age").read_bytes(),
        keyfile,
        lambda st, fk: [
            Stanza(s.type, s.args, bytes(32)) if s.type == STANZA_TYPE else s for s in st
        ],
    )
    (root / "forged.age").write_bytes(forged)
    damaged = bytearray((root / "d/ok2.age").read_bytes())
    damaged[-1] ^= 1
    (root / "d/ok2.age").write_bytes(damaged)
    proc = verify(root, keyfile)
    assert proc.returncode == ExitCode.DAMAGE
    lines = proc.stdout.decode().splitlines()
    assert [line.split(":")[0] for line in lines] == ["d/ok2.age", "d/planted.age", "forged.age"]
    assert "untagged" in lines[1] and "bad proof" in lines[2] and "authenticated" in lines[0]
    assert b"attacker" not in proc.stdout + proc.stderr
    assert "4 files checked, 3 with problems" in proc.stderr.decode()


def test_old_store_is_reported_then_upgraded(tmp_path: Path, keyfile: KeyFile) -> None:
    files = {"a.txt": b"alpha\n", "sub/b.bin": os.urandom(300_000), "empty": b""}
    root = old_store(tmp_path, keyfile, files)
    os.chmod(root / "a.txt.age", 0o640)
    os.utime(root / "a.txt.age", ns=(1_000_000_000, 2_000_000_000))
    before = verify(root, keyfile)
    assert before.returncode == ExitCode.DAMAGE
    assert before.stdout.decode().count("untagged") == 3
    assert "no authentication key" in before.stderr.decode()

    upgraded = verify(root, keyfile, "--upgrade")
    assert upgraded.returncode == 0, upgraded.stdout + upgraded.stderr
    assert "3 tagged now" in upgraded.stderr.decode()
    store = open_store(root, [keyfile.identity])
    assert store.auth is not None
    for name, plaintext in files.items():
        data = (root / f"{name}.age").read_bytes()
        assert proof_of(data, keyfile, store.auth) is Proof.VALID, name
        assert go_age_decrypt(data, keyfile) == plaintext, name
    st = os.stat(root / "a.txt.age")
    assert (st.st_mode & 0o777, st.st_mtime_ns) == (0o640, 2_000_000_000)
    assert verify(root, keyfile).returncode == 0
    assert verify(root, keyfile, "--upgrade").stderr.decode().endswith("0 tagged now\n")


def test_upgrade_does_not_tag_a_damaged_file(tmp_path: Path, keyfile: KeyFile) -> None:
    root = old_store(tmp_path, keyfile, {"bad": b"x" * 1000})
    data = bytearray((root / "bad.age").read_bytes())
    data[-1] ^= 1
    (root / "bad.age").write_bytes(data)
    proc = verify(root, keyfile, "--upgrade")
    assert proc.returncode == ExitCode.DAMAGE
    assert STANZA_TYPE.encode() not in (root / "bad.age").read_bytes()


def count_tagged(root: Path, names: list[str]) -> int:
    marker = f"\n-> {STANZA_TYPE} ".encode()
    return sum(marker in (root / f"{name}.age").read_bytes()[:1024] for name in names)


def test_upgrade_killed_midway_is_finished_by_running_it_again(
    tmp_path: Path, keyfile: KeyFile
) -> None:
    files = {f"d{i % 5}/f{i:03}": os.urandom(100_000 + i) for i in range(200)}
    root = old_store(tmp_path, keyfile, files)
    names = list(files)
    upgrade = subprocess.Popen(
        [sys.executable, "-m", "cagefs", "verify", "--upgrade", root, "-i", keyfile.path],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while count_tagged(root, names) < 10 and upgrade.poll() is None:
        assert time.monotonic() < deadline, "the upgrade tagged nothing in 2 minutes"
        time.sleep(0.005)
    upgrade.kill()
    upgrade.wait()
    at_kill = count_tagged(root, names)
    assert 0 < at_kill < len(names), f"not caught midway: {at_kill} of {len(names)} tagged"

    again = verify(root, keyfile, "--upgrade")
    assert again.returncode == 0, again.stdout + again.stderr
    assert count_tagged(root, names) == len(names)
    for name, plaintext in files.items():
        assert go_age_decrypt((root / f"{name}.age").read_bytes(), keyfile) == plaintext, name
    assert sorted(
        str(p.relative_to(root)) for p in root.rglob("*.age") if ".cagefs" not in p.parts
    ) == sorted(f"{n}.age" for n in names)
    # A temp of the killed run may be left: a mount removes it (layout.remove_stray_temps).
    assert len(os.listdir(root / TMP_DIR)) <= 1
