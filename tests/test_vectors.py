"""Every conformance vector in tests/age-vectors/testdata, through the engine.

The vectors are vendored (C2SP CCTV, see age-vectors/SOURCE.txt for the commit and licence), so
the suite runs from a fresh clone. $CAGEFS_EXTRA_AGE_VECTORS may name more directories of
vectors in the same format (colon-separated, e.g. a newer upstream checkout): they are run too.

Each vector is decrypted twice: as a forward-only stream (`decrypt_stream`, what pipes use) and,
for binary files, with the seekable reader on a real file (what the filesystem uses). Success
vectors must give the expected plaintext hash; failure vectors must fail with the exception
class of the failure kind the vector names.
"""

import hashlib
import io
import os
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from cagefs.age.armor import armor_reader
from cagefs.age.errors import (
    AgeError,
    ArmorError,
    HeaderError,
    HMACError,
    NoIdentityMatchError,
    PayloadError,
)
from cagefs.age.file import decrypt_stream, open_file
from cagefs.age.keys import IDENTITY_PARSERS, parse_identity
from cagefs.age.recipients import Identity
from cagefs.age.scrypt import ScryptIdentity

VECTORS = Path(__file__).resolve().parent / "age-vectors" / "testdata"
EXTRA_VECTORS = [Path(p) for p in os.environ.get("CAGEFS_EXTRA_AGE_VECTORS", "").split(":") if p]
HYBRID_PREFIX = "AGE-SECRET-KEY-PQ-1"
FAILURES: dict[str, type[AgeError]] = {
    "no match": NoIdentityMatchError,
    "HMAC failure": HMACError,
    "header failure": HeaderError,
    "payload failure": PayloadError,
    "armor failure": ArmorError,
}


@dataclass
class Vector:
    name: str
    expect: str
    data: bytes
    payload: str | None = None
    identities: list[str] = field(default_factory=list)
    passphrases: list[str] = field(default_factory=list)
    armored: bool = False


def load_vector(path: Path) -> Vector:
    """Parse the vector format of the README there: `key: value` lines, a blank line, the file."""
    head, data = path.read_bytes().split(b"\n\n", 1)
    fields: dict[str, list[str]] = {}
    for line in head.decode().splitlines():
        key, _, value = line.partition(": ")
        fields.setdefault(key, []).append(value)
    if fields.get("compressed") == ["zlib"]:
        data = zlib.decompress(data)
    return Vector(
        name=path.name,
        expect=fields["expect"][0],
        data=data,
        payload=fields.get("payload", [None])[0],
        identities=fields.get("identity", []),
        passphrases=fields.get("passphrase", []),
        armored=fields.get("armored") == ["yes"],
    )


def vector_paths() -> list[Path]:
    """The vendored vectors, then any extra ones not vendored under the same name."""
    paths = sorted(VECTORS.iterdir())
    names = {path.name for path in paths}
    for directory in EXTRA_VECTORS:
        paths += sorted(p for p in directory.iterdir() if p.is_file() and p.name not in names)
    return paths


def identities_for(vector: Vector) -> list[Identity]:
    for text in vector.identities:
        if text.startswith(HYBRID_PREFIX) and not any(
            prefix.startswith(HYBRID_PREFIX) for prefix in IDENTITY_PARSERS
        ):
            pytest.skip("mlkem768x25519 identities are not supported yet")
    keys: list[Identity] = [parse_identity(text) for text in vector.identities]
    return keys + [ScryptIdentity(p.encode()) for p in vector.passphrases]


def check_outcome(vector: Vector, decrypt) -> None:
    """Run `decrypt(sink)` and compare with what the vector expects."""
    out = bytearray()
    if vector.expect == "success":
        decrypt(out.extend)
        assert hashlib.sha256(out).hexdigest() == vector.payload
    else:
        with pytest.raises(FAILURES[vector.expect]):
            decrypt(out.extend)


def test_vectors_are_there() -> None:
    assert len(vector_paths()) >= 80


@pytest.mark.parametrize("path", vector_paths(), ids=lambda p: p.name)
def test_vector_streaming(path: Path) -> None:
    vector = load_vector(path)
    identities = identities_for(vector)
    source = io.BytesIO(vector.data)
    stream = armor_reader(source) if vector.armored else source
    check_outcome(vector, lambda sink: decrypt_stream(stream, sink, identities))


@pytest.mark.parametrize(
    "path", [p for p in vector_paths() if not load_vector(p).armored], ids=lambda p: p.name
)
def test_vector_seekable(path: Path, tmp_path: Path) -> None:
    vector = load_vector(path)
    identities = identities_for(vector)
    file = tmp_path / "file.age"
    file.write_bytes(vector.data)
    fd = os.open(file, os.O_RDONLY)
    try:
        check_outcome(vector, lambda sink: read_whole(fd, sink, identities))
    finally:
        os.close(fd)


def read_whole(fd: int, sink, identities: list[Identity]) -> None:
    """Decrypt a file chunk by chunk through the random-access reader."""
    reader = open_file(fd, identities).reader
    for index in range(max(1, -(-reader.size // 65536))):
        sink(reader.read_chunk(index))
