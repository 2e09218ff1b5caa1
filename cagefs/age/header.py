"""The age v1 header: strict parsing, canonical writing, and the header MAC.

The header is text: a version line, one stanza per recipient (`-> TYPE ARGS...` and a base64
body wrapped at 64 columns), then `--- ` and the base64 HMAC of everything before it. Parsing is
strict so that exactly one byte string is a valid header for a given content, as the spec asks.
"""

import hmac
from dataclasses import dataclass
from hashlib import sha256
from typing import BinaryIO

from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from cagefs.age.encoding import b64decode, b64encode
from cagefs.age.errors import HeaderError, HMACError

VERSION_LINE = b"age-encryption.org/v1\n"
BODY_COLUMNS = 64
MAC_PREFIX = b"---"
_MAX_LINE = 64 * 1024
_MAX_HEADER = 16 * 1024 * 1024


@dataclass(frozen=True)
class Stanza:
    """One recipient stanza: its type, its arguments, and its decoded body."""

    type: str
    args: tuple[str, ...]
    body: bytes

    def encode(self) -> bytes:
        line = " ".join(("->", self.type, *self.args)).encode("ascii") + b"\n"
        text = b64encode(self.body).encode("ascii")
        # A body whose encoding fills its last line exactly still ends with a short (empty) line.
        rows = [text[i : i + BODY_COLUMNS] for i in range(0, len(text) + 1, BODY_COLUMNS)]
        return line + b"\n".join(rows) + b"\n"


@dataclass(frozen=True)
class Header:
    """A parsed header. `mac_input` is the exact text the MAC covers; `length` the header's size."""

    stanzas: tuple[Stanza, ...]
    mac: bytes
    mac_input: bytes

    @property
    def length(self) -> int:
        return len(self.mac_input) + 1 + 43 + 1

    def verify_mac(self, file_key: bytes) -> None:
        if not hmac.compare_digest(header_mac(file_key, self.mac_input), self.mac):
            raise HMACError("header MAC mismatch: the header was modified or the key is wrong")


def hkdf_sha256(ikm: bytes, salt: bytes, info: bytes, length: int = 32) -> bytes:
    return HKDF(algorithm=SHA256(), length=length, salt=salt, info=info).derive(ikm)


def header_mac(file_key: bytes, mac_input: bytes) -> bytes:
    mac_key = hkdf_sha256(file_key, b"", b"header")
    return hmac.new(mac_key, mac_input, sha256).digest()


def encode_header(stanzas: list[Stanza], file_key: bytes) -> bytes:
    """The canonical header for these stanzas, MAC'd with the file key."""
    mac_input = VERSION_LINE + b"".join(s.encode() for s in stanzas) + MAC_PREFIX
    return mac_input + b" " + b64encode(header_mac(file_key, mac_input)).encode() + b"\n"


def _is_arg(text: bytes) -> bool:
    return bool(text) and all(33 <= c <= 126 for c in text)


class _LineReader:
    """Reads LF-terminated lines and keeps the raw bytes, so the MAC covers what was read."""

    def __init__(self, source: BinaryIO) -> None:
        self._source = source
        self.consumed = bytearray()

    def line(self) -> bytes:
        """The next line without its LF; a header always continues, so EOF is an error."""
        raw = self._source.readline(_MAX_LINE + 1)
        if not raw.endswith(b"\n"):
            if len(raw) > _MAX_LINE:
                raise HeaderError("header line too long")
            raise HeaderError("header is truncated" if raw or self.consumed else "file is empty")
        self.consumed += raw
        if len(self.consumed) > _MAX_HEADER:
            raise HeaderError("header too large")
        line = raw[:-1]
        if line.endswith(b"\r"):
            raise HeaderError("header lines must end with LF, not CRLF")
        return line


def _parse_stanza(first: bytes, lines: _LineReader) -> Stanza:
    parts = first.split(b" ")[1:]
    if not parts or not all(_is_arg(p) for p in parts):
        raise HeaderError("malformed stanza line")
    encoded = bytearray()
    while True:
        row = lines.line()
        if len(row) > BODY_COLUMNS:
            raise HeaderError("stanza body line longer than 64 columns")
        encoded += row
        if len(row) < BODY_COLUMNS:
            break
    try:
        body = b64decode(bytes(encoded))
    except ValueError as exc:
        raise HeaderError(f"stanza body: {exc}") from None
    kind, *args = (p.decode("ascii") for p in parts)
    return Stanza(kind, tuple(args), body)


def read_header(source: BinaryIO) -> Header:
    """Parse a header from a binary stream, leaving it positioned at the payload nonce."""
    lines = _LineReader(source)
    if lines.line() + b"\n" != VERSION_LINE:
        raise HeaderError("not an age v1 file (unknown version line)")
    stanzas = []
    while True:
        line = lines.line()
        if line.startswith(b"-> "):
            stanzas.append(_parse_stanza(line, lines))
        elif line.startswith(MAC_PREFIX + b" "):
            break
        else:
            raise HeaderError("malformed header line")
    if not stanzas:
        raise HeaderError("header has no recipient stanzas")
    mac_text = line[len(MAC_PREFIX) + 1 :]
    try:
        mac = b64decode(mac_text)
    except ValueError:
        raise HeaderError("malformed header MAC") from None
    if len(mac) != 32:
        raise HeaderError("malformed header MAC")
    mac_input = bytes(lines.consumed[: -len(line) - 1]) + MAC_PREFIX
    return Header(tuple(stanzas), mac, mac_input)
