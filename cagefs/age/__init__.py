"""An age v1 engine on `cryptography`: strict headers, seekable payloads, no FUSE inside."""

from cagefs.age.errors import (
    AgeError,
    ArmorError,
    HeaderError,
    HMACError,
    KeyFormatError,
    NoIdentityMatchError,
    PayloadError,
    UnsupportedError,
)
from cagefs.age.file import OpenedFile, decrypt_stream, open_file, read_header_at, start_file
from cagefs.age.keys import (
    parse_identity,
    parse_identity_file,
    parse_recipient,
    parse_recipients_file,
)
from cagefs.age.recipients import Identity, Recipient
from cagefs.age.scrypt import ScryptIdentity, ScryptRecipient
from cagefs.age.stream import (
    CHUNK_SIZE,
    Buffer,
    PayloadReader,
    PayloadState,
    PayloadWriter,
    plaintext_size,
)
from cagefs.age.x25519 import X25519Identity, X25519Recipient

__all__ = [
    "CHUNK_SIZE",
    "AgeError",
    "ArmorError",
    "Buffer",
    "HMACError",
    "HeaderError",
    "Identity",
    "KeyFormatError",
    "NoIdentityMatchError",
    "OpenedFile",
    "PayloadError",
    "PayloadReader",
    "PayloadState",
    "PayloadWriter",
    "Recipient",
    "ScryptIdentity",
    "ScryptRecipient",
    "UnsupportedError",
    "X25519Identity",
    "X25519Recipient",
    "decrypt_stream",
    "open_file",
    "parse_identity",
    "parse_identity_file",
    "parse_recipient",
    "parse_recipients_file",
    "plaintext_size",
    "read_header_at",
    "start_file",
]
