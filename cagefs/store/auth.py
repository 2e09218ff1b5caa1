"""Tamper evidence: a proof of origin in every file the store writes, under a key of its own.

age has no sender authentication: anyone who can read `config.toml` can encrypt a file to the
store's recipients. So every file cagefs writes carries one extra header stanza,

    -> cagefs-auth KEY_ID
    BASE64(HMAC-SHA-256(HKDF(auth key, info="cagefs-auth v1 " + KIND), MAC input))

where the MAC input binds the key id, the file key (through HKDF, never the key itself) and
every other stanza of the header in order. Only a holder of the store's authentication key
(`.cagefs/auth.age`, encrypted to every recipient) can make one; stock age readers skip the
stanza type they do not know. KIND keeps a proof from being valid for another role (a journal
record put in the tree as a file). The path is not bound: moves and renames stay free
(docs/ARCHITECTURE.md, "Tamper evidence", says what an attacker can still do).
"""

import enum
import hmac
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from hashlib import sha256
from pathlib import Path

from cagefs.age.encoding import b64decode, b64encode
from cagefs.age.errors import AgeError
from cagefs.age.header import VERSION_LINE, Header, Stanza, hkdf_sha256
from cagefs.errors import CageError, UsageError

STANZA_TYPE = "cagefs-auth"
KEY_SIZE = 32
TAG_SIZE = 32
KEY_TEXT_PREFIX = b"cagefs-auth-key-v1 "
_VERSION = b"cagefs-auth v1"


class Kind(enum.Enum):
    """What a proof vouches a file is; a proof for one kind is never valid for another."""

    FILE = "file"  # a backing file in the tree
    CANARY = "canary"  # .cagefs/canary.age
    JOURNAL = "journal"  # reserved: change-journal records (issue "Cheap edits")


class Proof(enum.Enum):
    """What a header's proof says about it, for the mount's check and for `cagefs verify`."""

    VALID = "tagged"
    MISSING = "untagged: no proof of origin (planted, or written before the store was upgraded)"
    OTHER_KEY = "tagged under another authentication key (another store's file?)"
    BAD = "bad proof of origin (forged, altered, or copied from another file)"


class UntrustedFileError(AgeError):
    """A file that decrypts but that this store did not write (or cannot tell it did)."""


@dataclass(frozen=True)
class AuthKey:
    """The store's authentication key: whoever holds it can write files the store accepts."""

    secret: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if len(self.secret) != KEY_SIZE:
            raise CageError("authentication key has the wrong size")

    @classmethod
    def generate(cls) -> "AuthKey":
        return cls(os.urandom(KEY_SIZE))

    @classmethod
    def from_text(cls, text: bytes) -> "AuthKey":
        """The key from auth.age's plaintext: one line, `cagefs-auth-key-v1 BASE64`."""
        if not (text.startswith(KEY_TEXT_PREFIX) and text.endswith(b"\n")):
            raise CageError("not a cagefs authentication key")
        try:
            return cls(b64decode(text[len(KEY_TEXT_PREFIX) : -1]))
        except ValueError:
            raise CageError("not a cagefs authentication key") from None

    def text(self) -> bytes:
        return KEY_TEXT_PREFIX + b64encode(self.secret).encode() + b"\n"

    @cached_property
    def key_id(self) -> str:
        """A public name for the key (no secret): tells "another key" from "forged"."""
        return b64encode(hmac.new(self.secret, b"cagefs-auth key id", sha256).digest()[:8])

    def tag(self, file_key: bytes, stanzas: Sequence[Stanza], kind: Kind) -> Stanza:
        """The proof stanza for a header with this file key and these (other) stanzas."""
        return Stanza(STANZA_TYPE, (self.key_id,), self._mac(file_key, stanzas, kind))

    def proof(self, header: Header, file_key: bytes, kind: Kind) -> Proof:
        """Check the proof of a header whose file key was unwrapped (and age MAC checked)."""
        proofs = [s for s in header.stanzas if s.type == STANZA_TYPE]
        if not proofs:
            return Proof.MISSING
        if len(proofs) > 1 or len(proofs[0].args) != 1 or len(proofs[0].body) != TAG_SIZE:
            return Proof.BAD
        if proofs[0].args[0] != self.key_id:
            return Proof.OTHER_KEY
        others = [s for s in header.stanzas if s.type != STANZA_TYPE]
        expected = self._mac(file_key, others, kind)
        return Proof.VALID if hmac.compare_digest(expected, proofs[0].body) else Proof.BAD

    def _mac(self, file_key: bytes, stanzas: Sequence[Stanza], kind: Kind) -> bytes:
        mac_key = self._mac_keys[kind]
        committed = hkdf_sha256(file_key, b"", b"cagefs-auth file key")
        head = _VERSION + b"\n" + self.key_id.encode() + b"\n" + committed + VERSION_LINE
        mac_input = head + b"".join(s.encode() for s in stanzas)
        return hmac.new(mac_key, mac_input, sha256).digest()

    @cached_property
    def _mac_keys(self) -> dict[Kind, bytes]:
        return {
            kind: hkdf_sha256(self.secret, b"", _VERSION + b" " + kind.value.encode())
            for kind in Kind
        }


def proof_under(key: AuthKey | None, header: Header, file_key: bytes, kind: Kind) -> Proof:
    """A header's proof; without a key (an old store) only "untagged" can be true of it."""
    if key is not None:
        return key.proof(header, file_key, kind)
    tagged = any(s.type == STANZA_TYPE for s in header.stanzas)
    return Proof.OTHER_KEY if tagged else Proof.MISSING


def check_accept_untagged(read_only: bool, accept_untagged: bool) -> None:
    """Untagged files are served only read-only: writing one would give it a genuine proof."""
    if accept_untagged and not read_only:
        raise UsageError("--accept-untagged needs a read-only mount (-o ro)")


def check_can_mount(root: Path, auth: AuthKey | None, accept_untagged: bool) -> None:
    """A store made before tamper evidence has nothing to check files against: refused
    unless untagged files are accepted (a read-only mount during the migration)."""
    if auth is None and not accept_untagged:
        raise CageError(
            f"store {root} has no authentication key (made before tamper evidence): "
            f"run `cagefs verify --upgrade {root}`, or mount it with -o ro --accept-untagged"
        )


@dataclass(frozen=True)
class FileAuth:
    """What a mount does with proofs: tag every file it writes, check every file it opens.

    `key` is None only for a store made before tamper evidence; such a store, and untagged
    files in an upgraded one, are served only with `accept_untagged` (a read-only mount).
    """

    key: AuthKey | None
    accept_untagged: bool = False

    def tag(self, file_key: bytes, stanzas: Sequence[Stanza]) -> list[Stanza]:
        """age.start_file's `extra` hook: the proof for a new backing file."""
        if self.key is None:  # a read-only mount of an old store never writes
            raise CageError("this store has no authentication key: run `cagefs verify --upgrade`")
        return [self.key.tag(file_key, stanzas, Kind.FILE)]

    def check(self, header: Header, file_key: bytes) -> None:
        """age.open_file's `check` hook: refuse a backing file the store did not write."""
        proof = proof_under(self.key, header, file_key, Kind.FILE)
        if proof is Proof.VALID or (proof is Proof.MISSING and self.accept_untagged):
            return
        raise UntrustedFileError(f"refused: {proof.value}")
