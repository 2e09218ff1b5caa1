"""Whole age files: header plus payload, for writing, random-access reading and streaming."""

import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import BinaryIO

from cagefs.age.errors import AgeError
from cagefs.age.header import Header, Stanza, encode_header, read_header
from cagefs.age.recipients import Identity, Recipient, new_file_key, unwrap_file_key, wrap_file_key
from cagefs.age.stream import (
    Buffer,
    LendingSink,
    PayloadReader,
    PayloadWriter,
    Sink,
    decrypt_payload_blocks,
    decrypt_payload_stream,
)

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
    """Just enough of a binary stream over a descriptor for the header parser. The header's
    lines are served from one read of its first block (a read per line cost a third of the
    parse)."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._read = b""  # the file from its start, as far as read
        self.position = 0

    def readline(self, limit: int) -> bytes:
        at = self.position
        while (end := self._read.find(b"\n", at, at + limit)) < 0 and len(self._read) - at < limit:
            more = os.pread(self._fd, 65536 if self._read else 4096, len(self._read))
            if not more:
                break
            self._read += more
        line = self._read[at : end + 1 if end >= 0 else at + limit]
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


def decrypt_blocks(
    blocks: Iterable[Buffer], sink: Sink | LendingSink, identities: Sequence[Identity]
) -> None:
    """Decrypt a binary age file that arrives as consecutive blocks of any sizes (a pipe read
    ahead by a thread), in constant memory. A block need only stay valid until the next one is
    asked for; the payload is opened straight from the blocks (`decrypt_payload_blocks`).
    """
    source = BlockStream(blocks)
    header = read_header(source)  # type: ignore[arg-type]
    file_key = unwrap_file_key(header, identities)
    decrypt_payload_blocks(source.rest(), sink, file_key)


class BlockStream:
    """Just enough of a binary stream over consecutive blocks for the header parser and the
    armor decoder; `rest()` goes on with the blocks from where reading stopped."""

    _STEP = 4096  # readline without a limit looks for the end of line this much at a time

    def __init__(self, blocks: Iterable[Buffer]) -> None:
        self._blocks = iter(blocks)
        self._view = memoryview(b"")

    def readline(self, limit: int = -1) -> bytes:
        line = bytearray()
        while (limit < 0 or len(line) < limit) and (view := self._current()):
            want = min(len(view), self._STEP if limit < 0 else limit - len(line))
            piece = bytes(view[:want])
            end = piece.find(b"\n")
            if end >= 0:
                piece = piece[: end + 1]
            line += piece
            self._view = view[len(piece) :]
            if end >= 0:
                break
        return bytes(line)

    def read(self, size: int = -1) -> bytes:
        data = bytearray()
        while (size < 0 or len(data) < size) and (view := self._current()):
            take = len(view) if size < 0 else min(len(view), size - len(data))
            data += view[:take]
            self._view = view[take:]
        return bytes(data)

    def rest(self) -> Iterator[Buffer]:
        if self._view:
            yield self._view
        yield from self._blocks

    def _current(self) -> memoryview:
        """The unread part of the current block; empty only at the end."""
        while not self._view and (block := next(self._blocks, None)) is not None:
            self._view = memoryview(block).cast("B")
        return self._view
