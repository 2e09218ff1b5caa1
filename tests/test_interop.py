"""Interop with the reference implementations, both directions: pyrage (rage) and the Go `age` CLI.

Files written by the engine must decrypt with pyrage and `age -d`; files written by pyrage and
`age` must decrypt with the engine, both as a stream and through the seekable reader. Passphrase
files are made and opened by `age` on a real pseudo-terminal, since it reads passphrases only
from /dev/tty.
"""

import io
import os
import random
import subprocess
from pathlib import Path

import pyrage
import pytest

from cagefs.age.armor import ArmorWriter, unarmor
from cagefs.age.file import decrypt_stream, open_file, start_file
from cagefs.age.recipients import Identity, Recipient
from cagefs.age.scrypt import ScryptIdentity, ScryptRecipient
from cagefs.age.stream import CHUNK_SIZE
from cagefs.store.keyring import read_age_file

SIZES = [0, 1, 65535, 65536, 65537, 5 * 1024 * 1024 + 7]
PASSPHRASE = "correct horse battery staple"


def plaintext_of(size: int) -> bytes:
    return random.Random(size).randbytes(size)


def engine_encrypt(plaintext: bytes, recipients: list[Recipient], armor: bool = False) -> bytes:
    out = bytearray()
    armorer = ArmorWriter(out.extend) if armor else None
    writer = start_file(armorer.write if armorer else out.extend, recipients)
    # Uneven pushes, to exercise the writer's chunk carry-over as real callers do.
    for offset in range(0, len(plaintext), 100_003):
        writer.write(plaintext[offset : offset + 100_003])
    writer.close()
    if armorer:
        armorer.close()
    return bytes(out)


def engine_decrypt(data: bytes, identities: list[Identity], tmp_path: Path) -> bytes:
    """Decrypt as a stream; for binary files also with the seekable reader, which must agree."""
    out = bytearray()
    decrypt_stream(unarmor(io.BytesIO(data)), out.extend, identities)
    streamed = bytes(out)
    if not data.startswith(b"-----BEGIN"):
        assert seekable_read(data, identities, tmp_path) == streamed
    return streamed


def seekable_read(data: bytes, identities: list[Identity], tmp_path: Path) -> bytes:
    path = tmp_path / "seekable.age"
    path.write_bytes(data)
    return read_age_file(path, identities)


def age_cli(*args: str, stdin: bytes = b"") -> bytes:
    return subprocess.run(["age", *args], input=stdin, capture_output=True, check=True).stdout


@pytest.fixture
def keys(new_keyfile) -> list:
    return [new_keyfile(f"key{i}.txt") for i in range(3)]


@pytest.mark.parametrize("size", SIZES)
def test_engine_to_age_and_pyrage(size: int, keyfile, tmp_path: Path) -> None:
    plaintext = plaintext_of(size)
    encrypted = tmp_path / "file.age"
    encrypted.write_bytes(engine_encrypt(plaintext, [keyfile.identity.recipient()]))
    assert age_cli("-d", "-i", str(keyfile.path), str(encrypted)) == plaintext
    rage_identity = pyrage.x25519.Identity.from_str(str(keyfile.identity))
    assert pyrage.decrypt(encrypted.read_bytes(), [rage_identity]) == plaintext


@pytest.mark.parametrize("size", SIZES)
def test_age_and_pyrage_to_engine(size: int, keyfile, tmp_path: Path) -> None:
    plaintext = plaintext_of(size)
    from_age = age_cli("-e", "-r", keyfile.recipient, stdin=plaintext)
    assert engine_decrypt(from_age, [keyfile.identity], tmp_path) == plaintext
    rage_recipient = pyrage.x25519.Recipient.from_str(keyfile.recipient)
    from_rage = pyrage.encrypt(plaintext, [rage_recipient])
    assert engine_decrypt(from_rage, [keyfile.identity], tmp_path) == plaintext


@pytest.mark.parametrize("size", [0, 65536, 200_000])
def test_several_recipients_both_ways(size: int, keys: list, tmp_path: Path) -> None:
    plaintext = plaintext_of(size)
    encrypted = tmp_path / "file.age"
    encrypted.write_bytes(engine_encrypt(plaintext, [k.identity.recipient() for k in keys]))
    for key in keys:
        assert age_cli("-d", "-i", str(key.path), str(encrypted)) == plaintext
    recipient_args = [arg for key in keys for arg in ("-r", key.recipient)]
    from_age = age_cli("-e", *recipient_args, stdin=plaintext)
    rage_recipients = [pyrage.x25519.Recipient.from_str(k.recipient) for k in keys]
    from_rage = pyrage.encrypt(plaintext, rage_recipients)
    for key in keys:
        assert engine_decrypt(from_age, [key.identity], tmp_path) == plaintext
        assert engine_decrypt(from_rage, [key.identity], tmp_path) == plaintext


@pytest.mark.parametrize("size", [0, 1, 65536, 65537, 300_000])
def test_armored_both_ways(size: int, keyfile, tmp_path: Path) -> None:
    plaintext = plaintext_of(size)
    armored = engine_encrypt(plaintext, [keyfile.identity.recipient()], armor=True)
    assert age_cli("-d", "-i", str(keyfile.path), stdin=armored) == plaintext
    rage_identity = pyrage.x25519.Identity.from_str(str(keyfile.identity))
    assert pyrage.decrypt(armored, [rage_identity]) == plaintext
    from_age = age_cli("-e", "-a", "-r", keyfile.recipient, stdin=plaintext)
    assert engine_decrypt(from_age, [keyfile.identity], tmp_path) == plaintext
    rage_recipient = pyrage.x25519.Recipient.from_str(keyfile.recipient)
    from_rage = pyrage.encrypt(plaintext, [rage_recipient], armored=True)
    assert engine_decrypt(from_rage, [keyfile.identity], tmp_path) == plaintext


@pytest.mark.parametrize("size", [0, 65537])
def test_scrypt_with_pyrage(size: int, tmp_path: Path) -> None:
    plaintext = plaintext_of(size)
    encrypted = engine_encrypt(plaintext, [ScryptRecipient(PASSPHRASE.encode())])
    assert pyrage.passphrase.decrypt(encrypted, PASSPHRASE) == plaintext
    from_rage = pyrage.passphrase.encrypt(plaintext, PASSPHRASE)
    identity = ScryptIdentity(PASSPHRASE.encode())
    assert engine_decrypt(from_rage, [identity], tmp_path) == plaintext


def test_scrypt_with_age_on_a_terminal(on_tty, tmp_path: Path) -> None:
    plaintext = plaintext_of(65537)
    source = tmp_path / "plain"
    source.write_bytes(plaintext)
    mine = tmp_path / "mine.age"
    mine.write_bytes(engine_encrypt(plaintext, [ScryptRecipient(PASSPHRASE.encode())]))
    status, shown = on_tty(
        ["age", "-d", "-o", str(tmp_path / "out"), str(mine)],
        [(b"Enter passphrase", PASSPHRASE.encode())],
    )
    assert status == 0, shown
    assert (tmp_path / "out").read_bytes() == plaintext

    theirs = tmp_path / "theirs.age"
    status, shown = on_tty(
        ["age", "-p", "-o", str(theirs), str(source)],
        [(b"Enter passphrase", PASSPHRASE.encode()), (b"Confirm passphrase", PASSPHRASE.encode())],
    )
    assert status == 0, shown
    identity = ScryptIdentity(PASSPHRASE.encode())
    assert engine_decrypt(theirs.read_bytes(), [identity], tmp_path) == plaintext


def test_random_reads_of_an_age_file(keyfile, tmp_path: Path) -> None:
    """Random offsets and lengths (within, across and past chunks) match the plaintext."""
    plaintext = plaintext_of(3 * 1024 * 1024 + 12345)
    path = tmp_path / "file.age"
    path.write_bytes(age_cli("-e", "-r", keyfile.recipient, stdin=plaintext))
    rng = random.Random(1234)
    fd = os.open(path, os.O_RDONLY)
    try:
        reader = open_file(fd, [keyfile.identity]).reader
        assert reader.size == len(plaintext)
        for _ in range(400):
            offset = rng.randrange(len(plaintext) + CHUNK_SIZE)
            length = rng.choice([1, 4096, CHUNK_SIZE, rng.randrange(4 * CHUNK_SIZE)])
            assert reader.read(offset, length) == plaintext[offset : offset + length]
        for index in range(-(-len(plaintext) // CHUNK_SIZE)):
            start = index * CHUNK_SIZE
            assert reader.read_chunk(index) == plaintext[start : start + CHUNK_SIZE]
    finally:
        os.close(fd)


def test_a_header_longer_than_one_read_opens_from_a_descriptor(keyfile, tmp_path: Path) -> None:
    """The header is read from a descriptor in blocks (4 KiB, then 64 KiB): one of 60
    recipients (about 6 KiB, written by Go age) goes past the first, and opens."""
    others = [
        subprocess.run(["age-keygen"], capture_output=True, text=True, check=True)
        .stdout.split("public key: ")[1]
        .split()[0]
        for _ in range(59)
    ]
    plaintext = plaintext_of(70_000)
    args = [arg for recipient in [*others, keyfile.recipient] for arg in ("-r", recipient)]
    path = tmp_path / "many.age"
    path.write_bytes(age_cli("-e", *args, stdin=plaintext))
    fd = os.open(path, os.O_RDONLY)
    try:
        opened = open_file(fd, [keyfile.identity])
        length, stanzas = opened.header.length, len(opened.header.stanzas)
        assert (length > 4096, stanzas) == (True, 60)
        assert opened.reader.read(0, len(plaintext) + 1) == plaintext
    finally:
        os.close(fd)
