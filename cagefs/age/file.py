"""Whole age files: header plus payload, for writing, random-access reading and streaming."""

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import BinaryIO

from cagefs.age.errors import AgeError
from cagefs.age.header import Header, Stanza, encode_header, read_header
from cagefs.age.recipients import Identity, Recipient, new_file_key, unwrap_file_key, wrap_file_key
from cagefs.age.stream import PayloadReader, PayloadWriter, Sink, decrypt_payload_stream

# Stanzas an application adds after the recipients' ones, computed from the new file key and
# those stanzas (e.g. a proof under a key of its own). age readers skip types they do not know.
ExtraStanzas = Callable[[bytes, Sequence[Stanza]], Sequence[Stanza]]
# A check of a header whose file key was just unwrapped and authenticated: raises to refuse it.
HeaderCheck = Callable[[Header, bytes], None]


def start_file(
    sink: Sink, recipients: Sequence[Recipient], extra: ExtraStanzas | None = None
) -> PayloadWriter:
    """Write a fresh header (new file key) to `sink` and return the writer for the payload.

    `sink` must write or copy what it is given before returning: buffers are reused.
    """
    file_key = new_file_key()
    stanzas = wrap_file_key(file_key, recipients)
    if extra is not None:
        stanzas += check_extra_allowed(stanzas, extra(file_key, stanzas))
    sink(encode_header(stanzas, file_key))
    return PayloadWriter(sink, file_key)


def check_extra_allowed(stanzas: Sequence[Stanza], extra: Sequence[Stanza]) -> Sequence[Stanza]:
    """An scrypt stanza must be alone in its header (age spec): age refuses anything beside it."""
    if extra and any(s.type == "scrypt" for s in stanzas):
        raise AgeError("a passphrase-encrypted file cannot carry extra stanzas")
    return extra


@dataclass
class OpenedFile:
    """A decryptable age file on a descriptor: its header, size, and random-access reader."""

    header: Header
    reader: PayloadReader

    @property
    def size(self) -> int:
        return self.reader.size


class _FdStream:
    """Just enough of a binary stream over a descriptor for the header parser."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self.position = 0

    def readline(self, limit: int) -> bytes:
        block = os.pread(self._fd, min(limit, 4096), self.position)
        while b"\n" not in block and len(block) < limit:
            more = os.pread(self._fd, min(limit - len(block), 65536), self.position + len(block))
            if not more:
                break
            block += more
        end = block.find(b"\n")
        line = block if end < 0 else block[: end + 1]
        self.position += len(line)
        return line


def read_header_at(fd: int) -> Header:
    """Parse the header at the start of a descriptor without moving its offset."""
    return read_header(_FdStream(fd))  # type: ignore[arg-type]


def open_file(
    fd: int, identities: Sequence[Identity], check: HeaderCheck | None = None
) -> OpenedFile:
    """Open an age file for random access; `check` may refuse it once its key is known."""
    header = read_header_at(fd)
    file_key = unwrap_file_key(header, identities)
    if check is not None:
        check(header, file_key)
    return OpenedFile(header, PayloadReader(fd, header.length, file_key))


def decrypt_stream(source: BinaryIO, sink: Sink, identities: Sequence[Identity]) -> None:
    """Decrypt a forward-only stream (a pipe or stdin) into `sink` in constant memory.

    `sink` must write or copy what it is given before returning: buffers are reused.
    """
    header = read_header(source)
    file_key = unwrap_file_key(header, identities)
    decrypt_payload_stream(source.read, sink, file_key, getattr(source, "readinto", None))
