"""ASCII armor (age spec, "ASCII armor"): the binary file as padded base64 between BEGIN/END lines.

Decoding is strict like age's own reader, so an armored file has one valid spelling: 64-column
canonical padded base64 lines, a last line that may be shorter but not empty, nothing but
whitespace around the armor, and LF or CRLF line ends. Both directions stream in constant
memory: the decoder is a readable binary stream for `decrypt_stream`, the encoder a sink.
"""

import binascii
import io
from collections.abc import Callable, Iterator
from typing import BinaryIO

from cagefs.age.errors import ArmorError

BEGIN = b"-----BEGIN AGE ENCRYPTED FILE-----"
END = b"-----END AGE ENCRYPTED FILE-----"
COLUMNS = 64
_LINE_BYTES = COLUMNS // 4 * 3
_MAX_WHITESPACE = 1024
_MAX_LINE = 4096
_READ_SIZE = 256 * 1024
_BATCH_LINES = 4096
_WHITESPACE = b" \t\r\n\v\f"


def is_armored(start: bytes) -> bool:
    """Whether a file starting with these bytes is armored (BEGIN after optional whitespace)."""
    return start.lstrip(_WHITESPACE).startswith(BEGIN)


def unarmor(source: BinaryIO) -> BinaryIO:
    """`source` itself as a binary age stream: decoded if it is armored, passed through if not.

    A forward-only source cannot be rewound, so the bytes read to decide are replayed in front.
    """
    prefix = _read_up_to(source, _MAX_WHITESPACE + len(BEGIN))
    stream = io.BufferedReader(_prefixed(prefix, source))
    return armor_reader(stream) if is_armored(prefix) else stream


def armor_reader(source: BinaryIO) -> BinaryIO:
    """A binary stream of the file inside the armor read from `source`; ArmorError on bad armor."""
    return io.BufferedReader(_IterReader(_decoded(source)), buffer_size=_READ_SIZE)


class ArmorWriter:
    """Armors the bytes pushed to `write` into `sink`; `close()` writes the last line and END."""

    def __init__(self, sink: Callable[[bytes], object]) -> None:
        self._sink = sink
        self._pending = bytearray()
        sink(BEGIN + b"\n")

    def write(self, data: bytes | bytearray | memoryview) -> int:
        self._pending += data
        whole = len(self._pending) - len(self._pending) % _LINE_BYTES
        if whole:
            self._sink(_encode_lines(memoryview(self._pending)[:whole]))
            del self._pending[:whole]
        return len(data)

    def close(self) -> None:
        self._sink(_encode_lines(self._pending) + END + b"\n")
        self._pending = bytearray()


def _encode_lines(data: bytes | bytearray | memoryview) -> bytes:
    view = memoryview(data)
    return b"".join(
        binascii.b2a_base64(view[i : i + _LINE_BYTES]) for i in range(0, len(view), _LINE_BYTES)
    )


def _decoded(source: BinaryIO) -> Iterator[bytes]:
    """The decoded contents in batches, checking the whole armor layout as it goes."""
    lines = _lines(source)
    _skip_to_begin(lines)
    batch: list[bytes] = []
    for line in lines:
        if len(line) == COLUMNS and not line.endswith(b"="):
            batch.append(line)
            if len(batch) == _BATCH_LINES:
                yield _b64decode(batch)
                batch = []
            continue
        if line != END:
            _check_last_line(line)
            batch.append(line)
            if next(lines, None) != END:
                raise ArmorError("armor: a short base64 line must be followed by the END line")
        if batch:
            yield _b64decode(batch)
        _check_trailing(lines)
        return
    raise ArmorError("armor is truncated (no END line)")


def _lines(source: BinaryIO) -> Iterator[bytes]:
    """Lines without their LF or CRLF; the last one may lack a line end."""
    rest = b""
    while data := source.read(_READ_SIZE):
        pieces = (rest + data).split(b"\n")
        rest = pieces.pop()
        if len(rest) > _MAX_LINE:
            raise ArmorError("armor line too long")
        for piece in pieces:
            yield piece.removesuffix(b"\r")
    if rest:
        yield rest.removesuffix(b"\r")


def _skip_to_begin(lines: Iterator[bytes]) -> None:
    skipped = 0
    for line in lines:
        if line.strip(_WHITESPACE):
            if line != BEGIN:
                raise ArmorError("armor: missing BEGIN AGE ENCRYPTED FILE line")
            return
        skipped += len(line) + 1
        if skipped > _MAX_WHITESPACE:
            raise ArmorError("armor: too much whitespace before the BEGIN line")
    raise ArmorError("armor: missing BEGIN AGE ENCRYPTED FILE line")


def _check_last_line(line: bytes) -> None:
    if not line:
        raise ArmorError("armor: empty line inside the armor")
    if len(line) > COLUMNS:
        raise ArmorError("armor: line longer than 64 columns")


def _check_trailing(lines: Iterator[bytes]) -> None:
    seen = 0
    for line in lines:
        if line.strip(_WHITESPACE):
            raise ArmorError("armor: data after the END line")
        seen += len(line) + 1
        if seen > _MAX_WHITESPACE:
            raise ArmorError("armor: too much whitespace after the END line")


def _b64decode(lines: list[bytes]) -> bytes:
    """Strict padded base64, canonical only: re-encoding must give back the same text."""
    text = b"".join(lines)
    try:
        data = binascii.a2b_base64(text, strict_mode=True)
    except binascii.Error:
        raise ArmorError("armor: invalid base64") from None
    if binascii.b2a_base64(data, newline=False) != text:
        raise ArmorError("armor: non-canonical base64")
    return data


def _read_up_to(source: BinaryIO, size: int) -> bytes:
    data = b""
    while len(data) < size and (more := source.read(size - len(data))):
        data += more
    return data


class _IterReader(io.RawIOBase):
    """A raw stream over an iterator of byte blocks (errors from the iterator propagate)."""

    def __init__(self, blocks: Iterator[bytes]) -> None:
        self._blocks = blocks
        self._current = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        while not self._current:
            block = next(self._blocks, None)
            if block is None:
                return 0
            self._current = memoryview(block)
        n = min(len(buffer), len(self._current))
        buffer[:n] = self._current[:n]
        self._current = self._current[n:]
        return n


def _prefixed(prefix: bytes, source: BinaryIO) -> _IterReader:
    """A raw stream of `prefix` followed by the rest of `source`."""

    def blocks() -> Iterator[bytes]:
        yield prefix
        while data := source.read(_READ_SIZE):
            yield data

    return _IterReader(blocks())
