"""The age engine's small public API: bytes and files in, bytes and files out.

    from cagefs.age import encrypt, decrypt, parse_recipient, parse_identity
    ciphertext = encrypt(b"hello", [parse_recipient("age1...")])
    decrypt(ciphertext, [parse_identity("AGE-SECRET-KEY-1...")])     # b"hello"
    with open_reader("big.age", identities) as f:                   # random access
        f.read(10 << 30, 4096)                                       # decrypts one chunk

Output is a standard age v1 file (`age -d` reads it); input may be binary or ASCII-armored.
Files are written to a temporary name beside the target and renamed into place on success.
"""

import contextlib
import io
import os
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import TracebackType

from cagefs.age.armor import ArmorWriter, unarmor
from cagefs.age.file import decrypt_stream, open_file, start_file
from cagefs.age.recipients import Identity, Recipient

_BLOCK = 1 << 20
PathLike = str | os.PathLike[str]


def encrypt(plaintext: bytes, recipients: Sequence[Recipient], armor: bool = False) -> bytes:
    """An age file of `plaintext` for `recipients` (armored text if `armor`)."""
    out = bytearray()
    armored = ArmorWriter(out.extend) if armor else None
    writer = start_file(armored.write if armored else out.extend, recipients)
    writer.write(plaintext)
    writer.close()
    if armored:
        armored.close()
    return bytes(out)


def decrypt(ciphertext: bytes, identities: Sequence[Identity]) -> bytes:
    """The plaintext of an age file (binary or armored); raises an AgeError otherwise."""
    out = bytearray()
    decrypt_stream(unarmor(io.BytesIO(ciphertext)), out.extend, identities)
    return bytes(out)


def encrypt_file(
    source: PathLike, target: PathLike, recipients: Sequence[Recipient], armor: bool = False
) -> None:
    """Encrypt the file `source` into `target`, in constant memory."""
    with open(source, "rb") as src, _replacing(target) as out:
        armored = ArmorWriter(out.write) if armor else None
        writer = start_file(armored.write if armored else out.write, recipients)
        while block := src.read(_BLOCK):
            writer.write(block)
        writer.close()
        if armored:
            armored.close()


def decrypt_file(source: PathLike, target: PathLike, identities: Sequence[Identity]) -> None:
    """Decrypt the age file `source` into `target`, in constant memory; `target` is left
    untouched if `source` fails to authenticate anywhere."""
    with open(source, "rb") as src, _replacing(target) as out:
        decrypt_stream(unarmor(src), out.write, identities)


class Reader:
    """Random access to a binary age file: only the chunks a read covers are decrypted."""

    def __init__(self, path: PathLike, identities: Sequence[Identity]) -> None:
        self._fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            self._file = open_file(self._fd, identities)
        except BaseException:
            os.close(self._fd)
            raise

    @property
    def size(self) -> int:
        """The plaintext size, from the file's length alone."""
        return self._file.size

    def read(self, offset: int, length: int) -> bytes:
        """Up to `length` bytes of plaintext at `offset` (short only at the end)."""
        return self._file.reader.read(offset, length)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> "Reader":
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def open_reader(path: PathLike, identities: Sequence[Identity]) -> Reader:
    return Reader(path, identities)


@contextlib.contextmanager
def _replacing(target: PathLike) -> Iterator[io.BufferedWriter]:
    """A binary file at a temporary name beside `target`, renamed over it once durable: after
    a crash `target` is the old file or the whole new one."""
    path = Path(target)
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            yield out
            out.flush()
            os.fsync(out.fileno())
        os.replace(temp, path)
    except BaseException:
        os.unlink(temp)
        raise
    directory = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
