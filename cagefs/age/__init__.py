"""An age v1 engine on `cryptography`: strict headers, seekable payloads, no FUSE inside.

The public API (see `cagefs.age.api`): `encrypt`/`decrypt` for bytes, `encrypt_file`/
`decrypt_file` for files, `open_reader` for random access, `parse_recipient`,
`parse_identity`, `parse_recipients_file` and `parse_identity_file` for keys, `AgeError` and
its subclasses for failures. The rest is exported for cagefs itself.
"""

from cagefs.age.api import Reader, decrypt, decrypt_file, encrypt, encrypt_file, open_reader
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
    "Reader",
    "Recipient",
    "ScryptIdentity",
    "ScryptRecipient",
    "UnsupportedError",
    "X25519Identity",
    "X25519Recipient",
    "decrypt",
    "decrypt_file",
    "decrypt_stream",
    "encrypt",
    "encrypt_file",
    "open_file",
    "open_reader",
    "parse_identity",
    "parse_identity_file",
    "parse_recipient",
    "parse_recipients_file",
    "plaintext_size",
    "read_header_at",
    "start_file",
]
