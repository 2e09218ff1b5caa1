"""ssh-ed25519 and ssh-rsa recipients and identities, as the Go age CLI (agessh) defines them.

They exist so people can reuse the ssh keys they already have; native age keys are preferred.
Stanzas name their key with a 4-byte tag (SHA-256 of the ssh wire key), so they are not anonymous,
and a stanza whose tag matches but which does not decrypt is an error, not "someone else's".

A passphrase-protected key file still shows its public key, so an identity is built without the
passphrase and asks for it only when a file actually has a stanza for that key.
"""

import binascii
from collections.abc import Callable, Sequence
from hashlib import sha256, sha512

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey, RSAPublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    PublicFormat,
    load_ssh_private_key,
    load_ssh_public_key,
)

from cagefs.age.encoding import b64decode, b64encode
from cagefs.age.errors import HeaderError, KeyFormatError, UnsupportedError
from cagefs.age.header import Stanza, hkdf_sha256
from cagefs.age.recipients import check_stanza_shape

ED25519_TYPE = "ssh-ed25519"
RSA_TYPE = "ssh-rsa"
MIN_RSA_BITS = 2048
OPENSSH_PRIVATE_KEY_BEGIN = b"-----BEGIN OPENSSH PRIVATE KEY-----"
_OPENSSH_PRIVATE_KEY_END = b"-----END OPENSSH PRIVATE KEY-----"
_OPENSSH_MAGIC = b"openssh-key-v1\0"
_ED25519_LABEL = b"age-encryption.org/v1/ssh-ed25519"
_RSA_OAEP = padding.OAEP(
    mgf=padding.MGF1(SHA256()), algorithm=SHA256(), label=b"age-encryption.org/v1/ssh-rsa"
)
_ZERO_NONCE = bytes(12)
_P = 2**255 - 19
_D = -121665 * pow(121666, -1, _P) % _P

PassphraseSource = Callable[[], bytes]


def _wire(key: Ed25519PublicKey | RSAPublicKey) -> bytes:
    """The key in ssh wire format, which the tag and the ed25519 tweak are computed over."""
    return binascii.a2b_base64(key.public_bytes(Encoding.OpenSSH, PublicFormat.OpenSSH).split()[1])


def _tag(wire: bytes) -> str:
    return b64encode(sha256(wire).digest()[:4])


def _edwards_to_montgomery(public: bytes) -> bytes:
    """The X25519 public key of an Ed25519 key: u = (1 + y) / (1 - y) mod p (RFC 7748, 4.1).

    cryptography has no such conversion; this is the map's arithmetic, not a primitive. The
    point must be on the curve (x^2 = (y^2 - 1) / (d y^2 + 1) a square) and not the identity.
    """
    y = int.from_bytes(public, "little") & ((1 << 255) - 1)
    y2 = y * y % _P
    x2 = (y2 - 1) * pow(_D * y2 + 1, -1, _P) % _P
    if y % _P == 1 or pow(x2, (_P - 1) // 2, _P) not in (0, 1):
        raise KeyFormatError("ssh-ed25519 public key is not a valid curve point")
    return ((1 + y) * pow(1 - y, -1, _P) % _P).to_bytes(32, "little")


def _ed25519_wrap_key(wire: bytes, shared: bytes, share: bytes, recipient: bytes) -> bytes:
    """agessh's key: the X25519 secret is multiplied by a tweak bound to the ssh public key."""
    tweak = hkdf_sha256(b"", wire, _ED25519_LABEL)
    tweaked = X25519PrivateKey.from_private_bytes(tweak).exchange(
        X25519PublicKey.from_public_bytes(shared)
    )
    return hkdf_sha256(tweaked, share + recipient, _ED25519_LABEL)


class SSHEd25519Recipient:
    labels: frozenset[str] = frozenset()

    def __init__(self, key: Ed25519PublicKey) -> None:
        self.wire = _wire(key)
        self.tag = _tag(self.wire)
        self.montgomery = _edwards_to_montgomery(key.public_bytes_raw())

    def __str__(self) -> str:
        return f"{ED25519_TYPE} {binascii.b2a_base64(self.wire, newline=False).decode()}"

    def wrap(self, file_key: bytes) -> list[Stanza]:
        ephemeral = X25519PrivateKey.generate()
        share = ephemeral.public_key().public_bytes_raw()
        shared = ephemeral.exchange(X25519PublicKey.from_public_bytes(self.montgomery))
        key = _ed25519_wrap_key(self.wire, shared, share, self.montgomery)
        body = ChaCha20Poly1305(key).encrypt(_ZERO_NONCE, file_key, None)
        return [Stanza(ED25519_TYPE, (self.tag, b64encode(share)), body)]


class SSHRSARecipient:
    labels: frozenset[str] = frozenset()

    def __init__(self, key: RSAPublicKey) -> None:
        if key.key_size < MIN_RSA_BITS:
            raise UnsupportedError(
                f"ssh-rsa key of {key.key_size} bits is too small (age needs {MIN_RSA_BITS}+)"
            )
        self.key = key
        self.wire = _wire(key)
        self.tag = _tag(self.wire)

    def __str__(self) -> str:
        return f"{RSA_TYPE} {binascii.b2a_base64(self.wire, newline=False).decode()}"

    def wrap(self, file_key: bytes) -> list[Stanza]:
        return [Stanza(RSA_TYPE, (self.tag,), self.key.encrypt(file_key, _RSA_OAEP))]


SSHRecipient = SSHEd25519Recipient | SSHRSARecipient


def _read_string(data: bytes, offset: int) -> tuple[bytes, int]:
    """One ssh wire `string` (uint32 length, bytes) at offset; returns it and the next offset."""
    end = offset + 4 + int.from_bytes(data[offset : offset + 4], "big")
    if offset + 4 > len(data) or end > len(data):
        raise KeyFormatError("truncated ssh key data")
    return data[offset + 4 : end], end


def _check_type(key_type: str) -> None:
    if key_type not in (ED25519_TYPE, RSA_TYPE):
        raise UnsupportedError(
            f"{key_type[:40]} keys cannot be used with age (only ssh-ed25519 and ssh-rsa)"
        )


def _recipient_from_wire(wire: bytes) -> SSHRecipient:
    key_type = _read_string(wire, 0)[0].decode("ascii", "replace")
    _check_type(key_type)
    try:
        key = load_ssh_public_key(key_type.encode() + b" " + binascii.b2a_base64(wire))
    except ValueError:
        raise KeyFormatError(f"malformed {key_type} public key") from None
    if isinstance(key, Ed25519PublicKey):
        return SSHEd25519Recipient(key)
    assert isinstance(key, RSAPublicKey)
    return SSHRSARecipient(key)


def parse_recipient(text: str) -> SSHRecipient:
    """A recipient from an authorized_keys-style line: `TYPE BASE64 [comment]`."""
    key_type, _, rest = text.strip().partition(" ")
    _check_type(key_type)
    try:
        wire = binascii.a2b_base64(rest.split()[0].encode(), strict_mode=True)
    except (IndexError, binascii.Error):
        raise KeyFormatError(f"malformed {key_type} public key") from None
    recipient = _recipient_from_wire(wire)
    if not str(recipient).startswith(key_type + " "):
        raise KeyFormatError(f"{key_type} line holds a key of another type")
    return recipient


def _openssh_public(data: bytes) -> tuple[bytes, bool]:
    """The public key wire blob of an OpenSSH private key file, and whether it is encrypted.

    The container keeps the public key in clear (openssh PROTOCOL.key), which is what lets an
    identity exist before its passphrase is asked for.
    """
    begin = data.find(OPENSSH_PRIVATE_KEY_BEGIN)
    end = data.find(_OPENSSH_PRIVATE_KEY_END)
    if begin < 0 or end < begin:
        raise KeyFormatError("not an OpenSSH private key file")
    try:
        raw = binascii.a2b_base64(b"".join(data[begin:end].splitlines()[1:]))
    except binascii.Error:
        raise KeyFormatError("malformed OpenSSH private key file") from None
    if not raw.startswith(_OPENSSH_MAGIC):
        raise KeyFormatError("malformed OpenSSH private key file")
    cipher, offset = _read_string(raw, len(_OPENSSH_MAGIC))
    _, offset = _read_string(raw, offset)  # kdf name
    _, offset = _read_string(raw, offset)  # kdf options
    if int.from_bytes(raw[offset : offset + 4], "big") != 1:
        raise KeyFormatError("OpenSSH private key files with several keys are not supported")
    public, _ = _read_string(raw, offset + 4)
    return public, cipher != b"none"


class _SSHIdentity:
    """What both ssh identity kinds share: lazy private key loading and stanza matching."""

    stanza_type: str
    n_args: int

    def __init__(self, recipient: SSHRecipient, load_private: Callable[[], object]) -> None:
        self._recipient = recipient
        self._load_private = load_private
        self._private: object | None = None

    def recipient(self) -> SSHRecipient:
        return self._recipient

    def _private_key(self) -> object:
        if self._private is None:
            self._private = self._load_private()
        return self._private

    def unwrap(self, stanzas: Sequence[Stanza]) -> bytes | None:
        for stanza in stanzas:
            if stanza.type != self.stanza_type:
                continue
            if len(stanza.args) != self.n_args:
                raise HeaderError(f"{self.stanza_type} stanza: expected {self.n_args} arguments")
            self._check(stanza)
            if stanza.args[0] != self._recipient.tag:
                continue
            file_key = self._unwrap_one(stanza)
            if file_key is None:
                raise HeaderError(f"{self.stanza_type} stanza for this key does not decrypt")
            return file_key
        return None

    def _check(self, stanza: Stanza) -> None:
        """Raise HeaderError if the stanza is malformed, whoever it is addressed to."""

    def _unwrap_one(self, stanza: Stanza) -> bytes | None:
        raise NotImplementedError


class SSHEd25519Identity(_SSHIdentity):
    stanza_type = ED25519_TYPE
    n_args = 2
    _recipient: SSHEd25519Recipient

    def _check(self, stanza: Stanza) -> None:
        check_stanza_shape(stanza, n_args=2, body_size=32)
        try:
            share = b64decode(stanza.args[1])
        except ValueError:
            raise HeaderError("ssh-ed25519 stanza: malformed share") from None
        if len(share) != 32:
            raise HeaderError("ssh-ed25519 stanza: share must be 32 bytes")

    def _unwrap_one(self, stanza: Stanza) -> bytes | None:
        key = self._private_key()
        assert isinstance(key, Ed25519PrivateKey)
        secret = X25519PrivateKey.from_private_bytes(sha512(key.private_bytes_raw()).digest()[:32])
        share = b64decode(stanza.args[1])
        try:
            shared = secret.exchange(X25519PublicKey.from_public_bytes(share))
        except ValueError:
            raise HeaderError("ssh-ed25519 stanza: low-order share") from None
        recipient = self._recipient
        wrap_key = _ed25519_wrap_key(recipient.wire, shared, share, recipient.montgomery)
        try:
            return ChaCha20Poly1305(wrap_key).decrypt(_ZERO_NONCE, stanza.body, None)
        except InvalidTag:
            return None


class SSHRSAIdentity(_SSHIdentity):
    stanza_type = RSA_TYPE
    n_args = 1

    def _unwrap_one(self, stanza: Stanza) -> bytes | None:
        key = self._private_key()
        assert isinstance(key, RSAPrivateKey)
        try:
            return key.decrypt(stanza.body, _RSA_OAEP)
        except ValueError:
            return None


SSHIdentity = SSHEd25519Identity | SSHRSAIdentity


def parse_identity(
    data: bytes, passphrase: PassphraseSource | None = None, name: str = "ssh key"
) -> SSHIdentity:
    """An identity from an OpenSSH private key file; `passphrase` is called only if needed."""
    public, encrypted = _openssh_public(data)
    recipient = _recipient_from_wire(public)

    def load_private() -> object:
        password = None
        if encrypted:
            if passphrase is None:
                raise KeyFormatError(f"{name} is passphrase-protected and no passphrase was given")
            password = passphrase()
        try:
            key = load_ssh_private_key(data, password)
        except ValueError:
            raise KeyFormatError(f"{name}: wrong passphrase or damaged key") from None
        if _wire(key.public_key()) != recipient.wire:  # type: ignore[union-attr]
            raise KeyFormatError(f"{name}: private key does not match its public key")
        return key

    kind = SSHEd25519Identity if isinstance(recipient, SSHEd25519Recipient) else SSHRSAIdentity
    return kind(recipient, load_private)
