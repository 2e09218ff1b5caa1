"""cagefs.age's public API (15.8), checked against the Go age CLI."""

import os
import subprocess
from pathlib import Path

import pytest
from conftest import KeyFile

from cagefs.age import (
    AgeError,
    NoIdentityMatchError,
    decrypt,
    decrypt_file,
    encrypt,
    encrypt_file,
    open_reader,
    parse_identity,
    parse_recipient,
)


def age_decrypt(path: Path, keyfile: KeyFile) -> bytes:
    done = subprocess.run(
        ["age", "-d", "-i", str(keyfile.path), str(path)], capture_output=True, check=True
    )
    return done.stdout


@pytest.mark.parametrize("armor", [False, True])
def test_bytes_round_trip_readable_by_age(tmp_path: Path, keyfile: KeyFile, armor: bool) -> None:
    recipient = parse_recipient(keyfile.recipient)
    ciphertext = encrypt(b"hello, age", [recipient], armor=armor)
    assert ciphertext.startswith(b"-----BEGIN AGE" if armor else b"age-encryption.org/v1\n")
    (tmp_path / "x.age").write_bytes(ciphertext)
    assert age_decrypt(tmp_path / "x.age", keyfile) == b"hello, age"
    assert decrypt(ciphertext, [keyfile.identity]) == b"hello, age"
    with pytest.raises(NoIdentityMatchError):
        decrypt(ciphertext, [parse_identity(str(type(keyfile.identity).generate()))])


def test_files_and_random_access(tmp_path: Path, keyfile: KeyFile) -> None:
    data = os.urandom(3 * 65536 + 123)
    (tmp_path / "plain").write_bytes(data)
    encrypt_file(tmp_path / "plain", tmp_path / "f.age", [parse_recipient(keyfile.recipient)])
    assert age_decrypt(tmp_path / "f.age", keyfile) == data
    decrypt_file(tmp_path / "f.age", tmp_path / "back", [keyfile.identity])
    assert (tmp_path / "back").read_bytes() == data
    with open_reader(tmp_path / "f.age", [keyfile.identity]) as reader:
        assert reader.size == len(data)
        assert reader.read(2 * 65536 - 5, 10) == data[2 * 65536 - 5 : 2 * 65536 + 5]
        assert reader.read(len(data) - 3, 100) == data[-3:]


def test_a_failed_decrypt_leaves_the_target_alone(tmp_path: Path, keyfile: KeyFile) -> None:
    encrypt_file_of = encrypt(os.urandom(200_000), [parse_recipient(keyfile.recipient)])
    damaged = bytearray(encrypt_file_of)
    damaged[-100] ^= 1
    (tmp_path / "bad.age").write_bytes(bytes(damaged))
    (tmp_path / "target").write_bytes(b"previous")
    with pytest.raises(AgeError):
        decrypt_file(tmp_path / "bad.age", tmp_path / "target", [keyfile.identity])
    assert (tmp_path / "target").read_bytes() == b"previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.age", "key.txt", "target"]
