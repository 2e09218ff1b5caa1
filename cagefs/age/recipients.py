"""What every recipient and identity type shares, and how a file key is wrapped and recovered.

A recipient wraps the 16-byte file key into stanzas; an identity looks through a header's
stanzas for one it can unwrap. Each type lives in its own module (x25519, scrypt, ...).
"""

import os
from collections.abc import Sequence
from typing import Protocol

from cagefs.age.errors import AgeError, HeaderError, NoIdentityMatchError
from cagefs.age.header import Header, Stanza

FILE_KEY_SIZE = 16


class Recipient(Protocol):
    """Something a file can be encrypted to."""

    def wrap(self, file_key: bytes) -> list[Stanza]: ...

    @property
    def labels(self) -> frozenset[str]:
        """Recipients with different label sets must not share a file (age spec, "labels")."""
        ...


class Identity(Protocol):
    """Something that can recover a file key from the stanzas addressed to it."""

    def unwrap(self, stanzas: Sequence[Stanza]) -> bytes | None:
        """The file key, None if no stanza is for this identity; HeaderError if one is malformed."""
        ...

    def recipient(self) -> Recipient:
        """The recipient that encrypts to this identity (for `keygen -y` and store init)."""
        ...


def new_file_key() -> bytes:
    return os.urandom(FILE_KEY_SIZE)


def wrap_file_key(file_key: bytes, recipients: Sequence[Recipient]) -> list[Stanza]:
    """All stanzas for these recipients, refusing mixes the spec forbids (e.g. scrypt + others)."""
    if not recipients:
        raise AgeError("no recipients given")
    label_sets = {r.labels for r in recipients}
    if len(label_sets) > 1:
        raise AgeError(
            "these recipients cannot share a file (a passphrase must be the only recipient, "
            "and post-quantum recipients cannot be mixed with classic ones)"
        )
    return [stanza for r in recipients for stanza in r.wrap(file_key)]


def unwrap_file_key(header: Header, identities: Sequence[Identity]) -> bytes:
    """Recover and authenticate the file key of a parsed header."""
    if any(s.type == "scrypt" for s in header.stanzas) and len(header.stanzas) != 1:
        raise HeaderError("an scrypt stanza must be the only stanza in the header")
    for identity in identities:
        file_key = identity.unwrap(header.stanzas)
        if file_key is not None:
            header.verify_mac(file_key)
            return file_key
    raise NoIdentityMatchError("no identity matched any of the file's recipients")


def check_stanza_shape(stanza: Stanza, n_args: int, body_size: int) -> None:
    """Raise HeaderError unless the stanza has exactly this many args and this body size."""
    if len(stanza.args) != n_args:
        raise HeaderError(f"{stanza.type} stanza: expected {n_args} arguments")
    if len(stanza.body) != body_size:
        raise HeaderError(f"{stanza.type} stanza: body must be {body_size} bytes")
