"""`cagefs encrypt` and `decrypt` as users run them: real processes, files, pipes, terminals."""

import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

CAGEFS = str(Path(sys.executable).parent / "cagefs")
PASSPHRASE = b"tr0ub4dor&3"


def cagefs(*args: str, stdin: bytes = b"") -> subprocess.CompletedProcess:
    return subprocess.run([CAGEFS, *args], input=stdin, capture_output=True, timeout=300)


def ok(*args: str, stdin: bytes = b"") -> bytes:
    result = cagefs(*args, stdin=stdin)
    assert result.returncode == 0, result.stderr
    assert result.stderr == b""
    return result.stdout


def fails(*args: str, stdin: bytes = b"", code: int = 1) -> str:
    """Run a command that must fail with exit code `code` (3: a wrong key, README "Exit
    codes"); return its single stderr line."""
    result = cagefs(*args, stdin=stdin)
    assert result.returncode == code
    lines = result.stderr.decode().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in lines[0]
    return lines[0]


def data_of(size: int) -> bytes:
    return random.Random(size).randbytes(size)


@pytest.fixture
def passfile(tmp_path: Path) -> Path:
    path = tmp_path / "passfile"
    path.write_bytes(PASSPHRASE + b"\n")
    return path


@pytest.mark.parametrize("size", [0, 65536, 2 * 1024 * 1024 + 1])
def test_files_round_trip(size: int, keyfile, tmp_path: Path) -> None:
    plain, encrypted, out = tmp_path / "plain", tmp_path / "plain.age", tmp_path / "out"
    plain.write_bytes(data_of(size))
    ok("encrypt", "-r", keyfile.recipient, "-o", str(encrypted), str(plain))
    ok("decrypt", "-i", str(keyfile.path), "-o", str(out), str(encrypted))
    assert out.read_bytes() == plain.read_bytes()
    age = subprocess.run(
        ["age", "-d", "-i", str(keyfile.path), str(encrypted)], capture_output=True
    )
    assert age.stdout == plain.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["key.txt", "out", "plain", "plain.age"]


def test_stdin_stdout_round_trip(keyfile) -> None:
    plaintext = data_of(3 * 65536 + 5)
    encrypted = ok("encrypt", "-r", keyfile.recipient, stdin=plaintext)
    assert encrypted.startswith(b"age-encryption.org/v1\n")
    assert ok("decrypt", "-i", str(keyfile.path), stdin=encrypted) == plaintext
    assert ok("decrypt", "-i", str(keyfile.path), "-", stdin=encrypted) == plaintext


def test_armor(keyfile, tmp_path: Path) -> None:
    plaintext = data_of(100_000)
    armored = ok("encrypt", "-a", "-r", keyfile.recipient, stdin=plaintext)
    assert armored.startswith(b"-----BEGIN AGE ENCRYPTED FILE-----\n")
    assert armored.endswith(b"-----END AGE ENCRYPTED FILE-----\n")
    assert ok("decrypt", "-i", str(keyfile.path), stdin=armored) == plaintext
    path = tmp_path / "file.age.asc"
    path.write_bytes(b"\n \t\r\n" + armored + b"  \n")  # whitespace around is allowed
    assert ok("decrypt", "-i", str(keyfile.path), str(path)) == plaintext
    age = subprocess.run(["age", "-d", "-i", str(keyfile.path)], input=armored, capture_output=True)
    assert age.stdout == plaintext


def test_recipients_files_and_several_identities(new_keyfile, tmp_path: Path) -> None:
    keys = [new_keyfile(f"k{i}") for i in range(3)]
    recipients = tmp_path / "recipients.txt"
    recipients.write_text(f"# team\n\n{keys[0].recipient}\n  {keys[1].recipient}\n")
    plaintext = b"for the team\n"
    encrypted = ok("encrypt", "-R", str(recipients), "-r", keys[2].recipient, stdin=plaintext)
    for key in keys:
        assert ok("decrypt", "-i", str(key.path), stdin=encrypted) == plaintext
    stranger = new_keyfile("stranger")
    both = ("-i", str(stranger.path), "-i", str(keys[1].path))
    assert ok("decrypt", *both, stdin=encrypted) == plaintext


def test_passfile(passfile: Path, keyfile) -> None:
    plaintext = data_of(70_000)
    encrypted = ok("encrypt", "--passfile", str(passfile), stdin=plaintext)
    assert b"\n-> scrypt " in encrypted[:100]
    assert ok("decrypt", "--passfile", str(passfile), stdin=encrypted) == plaintext
    # A passphrase and identities together: whichever fits opens the file.
    both = ("-i", str(keyfile.path), "--passfile", str(passfile))
    assert ok("decrypt", *both, stdin=encrypted) == plaintext


def test_wrong_passphrase(passfile: Path, tmp_path: Path) -> None:
    encrypted = ok("encrypt", "--passfile", str(passfile), stdin=b"secret")
    wrong = tmp_path / "wrong"
    wrong.write_text("not it\n")
    message = fails("decrypt", "--passfile", str(wrong), stdin=encrypted, code=3)
    assert message == "cagefs decrypt: wrong passphrase: it does not decrypt this file"


@pytest.mark.parametrize("armor", [[], ["-a"]])
def test_passphrase_protected_identity_file(armor, passfile: Path, keyfile, on_tty, tmp_path):
    """Identity files encrypted with a passphrase (as `age -p` makes them) are unlocked."""
    locked = tmp_path / "key.age"
    ok("encrypt", *armor, "--passfile", str(passfile), "-o", str(locked), str(keyfile.path))
    encrypted = tmp_path / "file.age"
    encrypted.write_bytes(ok("encrypt", "-r", keyfile.recipient, stdin=b"payload"))
    assert ok("decrypt", "-i", str(locked), "--passfile", str(passfile), str(encrypted)) == (
        b"payload"
    )
    out = tmp_path / "out"
    status, shown = on_tty(
        [CAGEFS, "decrypt", "-i", str(locked), "-o", str(out), str(encrypted)],
        [(b"passphrase for identity file", PASSPHRASE)],
    )
    assert status == 0, shown
    assert out.read_bytes() == b"payload"


def test_passphrase_on_the_terminal(on_tty, tmp_path: Path) -> None:
    plain, encrypted, out = tmp_path / "plain", tmp_path / "plain.age", tmp_path / "out"
    plain.write_bytes(data_of(65537))
    status, shown = on_tty(
        [CAGEFS, "encrypt", "-p", "-o", str(encrypted), str(plain)],
        [(b"Enter passphrase", PASSPHRASE), (b"Confirm passphrase", PASSPHRASE)],
    )
    assert status == 0, shown
    assert PASSPHRASE not in shown  # echo was off
    status, shown = on_tty(
        [CAGEFS, "decrypt", "-o", str(out), str(encrypted)], [(b"Enter passphrase", PASSPHRASE)]
    )
    assert status == 0, shown
    assert out.read_bytes() == plain.read_bytes()
    status, shown = on_tty(
        ["age", "-d", "-o", str(tmp_path / "by-age"), str(encrypted)],
        [(b"Enter passphrase", PASSPHRASE)],
    )
    assert status == 0, shown
    assert (tmp_path / "by-age").read_bytes() == plain.read_bytes()


def test_mismatched_confirmation(on_tty, tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    plain.write_bytes(b"x")
    status, shown = on_tty(
        [CAGEFS, "encrypt", "-p", "-o", str(tmp_path / "out"), str(plain)],
        [(b"Enter passphrase", b"one"), (b"Confirm passphrase", b"two")],
    )
    assert status == 1
    assert b"do not match" in shown
    assert not (tmp_path / "out").exists()


def test_refuses_binary_to_a_terminal(on_tty, keyfile, tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    plain.write_bytes(b"x")
    status, shown = on_tty([CAGEFS, "encrypt", "-r", keyfile.recipient, str(plain)], [])
    assert status == 1
    assert b"terminal" in shown
    assert b"age-encryption.org" not in shown
    status, shown = on_tty([CAGEFS, "encrypt", "-a", "-r", keyfile.recipient, str(plain)], [])
    assert status == 0
    assert b"-----BEGIN AGE ENCRYPTED FILE-----" in shown


@pytest.mark.parametrize("cut", ["truncated", "flipped", "flipped empty"])
@pytest.mark.parametrize("via", ["file", "stdin"])
def test_no_output_file_on_payload_failure(cut: str, via: str, keyfile, tmp_path: Path) -> None:
    size = 0 if cut == "flipped empty" else 5 * 65536
    data = ok("encrypt", "-r", keyfile.recipient, stdin=data_of(size))
    if cut == "truncated":
        damaged = data[: len(data) - 70_000]
    else:
        damaged = bytearray(data)
        damaged[-10] ^= 1
    source = tmp_path / "damaged.age"
    source.write_bytes(damaged)
    out = tmp_path / "out"
    if via == "file":
        message = fails("decrypt", "-i", str(keyfile.path), "-o", str(out), str(source))
    else:
        message = fails("decrypt", "-i", str(keyfile.path), "-o", str(out), stdin=bytes(damaged))
    assert "payload" in message
    assert sorted(os.listdir(tmp_path)) == ["damaged.age", "key.txt"]


def test_one_line_errors(keyfile, new_keyfile, tmp_path: Path) -> None:
    encrypted = ok("encrypt", "-r", keyfile.recipient, stdin=b"hello")
    other = new_keyfile("other")
    no_match = fails("decrypt", "-i", str(other.path), stdin=encrypted, code=3)
    assert "no identity matched" in no_match
    assert "No such file" in fails("decrypt", "-i", str(keyfile.path), str(tmp_path / "nope"))
    assert "No such file" in fails("decrypt", "-i", str(tmp_path / "nokey"), stdin=encrypted)
    assert "recipient" in fails("encrypt", "-r", "age1notarecipient", stdin=b"x")
    assert "recipient" in fails("encrypt", "-r", "ssh-nonsense AAAA", stdin=b"x")
    assert "no recipients" in fails("encrypt", stdin=b"x")
    assert "alone" in fails("encrypt", "-p", "-r", keyfile.recipient, stdin=b"x")
    assert "not an age v1 file" in fails("decrypt", "-i", str(keyfile.path), stdin=b"hello\n")
    assert "empty" in fails("decrypt", "-i", str(keyfile.path), stdin=b"")
    garbage = b"-----BEGIN AGE ENCRYPTED FILE-----\n!!!!\n-----END AGE ENCRYPTED FILE-----\n"
    assert "armor" in fails("decrypt", "-i", str(keyfile.path), stdin=garbage)
    secret = str(keyfile.identity)
    bad_key = tmp_path / "bad-key"
    bad_key.write_text(secret[:-3] + "qqq\n")
    message = fails("decrypt", "-i", str(bad_key), stdin=encrypted)
    assert secret[20:40] not in message  # never echo key material


def test_encrypt_and_decrypt_load_only_what_they_use(keyfile, tmp_path: Path) -> None:
    """Start-up counts in every pipe's time: `encrypt` and `decrypt` import neither the other
    verbs (the store, the mount) nor importlib.metadata (only --version needs it)."""
    plain, encrypted = tmp_path / "plain", tmp_path / "plain.age"
    plain.write_bytes(b"x" * 100)
    heavy = ("cagefs.store", "cagefs.fs", "cagefs.cli.mount", "importlib.metadata", "trio")
    script = (
        "import sys\n"
        "from cagefs.cli.main import main\n"
        "code = main(sys.argv[1:])\n"
        f"print([m for m in {heavy!r} if m in sys.modules], file=sys.stderr)\n"
        "sys.exit(code)\n"
    )
    for args in (
        ["encrypt", "-r", keyfile.recipient, "-o", str(encrypted), str(plain)],
        ["decrypt", "-i", str(keyfile.path), "-o", str(tmp_path / "out"), str(encrypted)],
    ):
        done = subprocess.run(
            [sys.executable, "-c", script, *args], capture_output=True, text=True, check=True
        )
        assert done.stderr == "[]\n", f"{args[0]} imported {done.stderr}"
    assert (tmp_path / "out").read_bytes() == plain.read_bytes()
