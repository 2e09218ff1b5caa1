"""Native age keys: X25519 recipients (`age1...`) and identities (`AGE-SECRET-KEY-1...`)."""

from collections.abc import Sequence

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from cagefs.age.encoding import b64decode, b64encode, bech32_decode, bech32_encode
from cagefs.age.errors import HeaderError, KeyFormatError
from cagefs.age.header import Stanza, hkdf_sha256
from cagefs.age.recipients import check_stanza_shape

STANZA_TYPE = "X25519"
_INFO = b"age-encryption.org/v1/X25519"
_ZERO_NONCE = bytes(12)


def _wrap_key(shared: bytes, share: bytes, recipient: bytes) -> bytes:
    return hkdf_sha256(shared, share + recipient, _INFO)


def _raw_public(key: X25519PublicKey) -> bytes:
    return key.public_bytes_raw()


class X25519Recipient:
    labels: frozenset[str] = frozenset()

    def __init__(self, public_key: bytes) -> None:
        self.public_key = public_key

    @classmethod
    def parse(cls, text: str) -> "X25519Recipient":
        hrp, data = bech32_decode(text)
        if hrp != "age" or len(data) != 32:
            raise KeyFormatError("malformed age1 recipient")
        return cls(data)

    def __str__(self) -> str:
        return bech32_encode("age", self.public_key)

    def wrap(self, file_key: bytes) -> list[Stanza]:
        ephemeral = X25519PrivateKey.generate()
        share = _raw_public(ephemeral.public_key())
        shared = ephemeral.exchange(X25519PublicKey.from_public_bytes(self.public_key))
        body = ChaCha20Poly1305(_wrap_key(shared, share, self.public_key)).encrypt(
            _ZERO_NONCE, file_key, None
        )
        return [Stanza(STANZA_TYPE, (b64encode(share),), body)]


class X25519Identity:
    def __init__(self, private_key: X25519PrivateKey) -> None:
        self._key = private_key
        self._public = _raw_public(private_key.public_key())

    @classmethod
    def generate(cls) -> "X25519Identity":
        return cls(X25519PrivateKey.generate())

    @classmethod
    def parse(cls, text: str) -> "X25519Identity":
        hrp, data = bech32_decode(text)
        if hrp != "age-secret-key-" or len(data) != 32:
            raise KeyFormatError("malformed AGE-SECRET-KEY-1 identity")
        return cls(X25519PrivateKey.from_private_bytes(data))

    def __str__(self) -> str:
        return bech32_encode("age-secret-key-", self._key.private_bytes_raw()).upper()

    def recipient(self) -> X25519Recipient:
        return X25519Recipient(self._public)

    def unwrap(self, stanzas: Sequence[Stanza]) -> bytes | None:
        for stanza in stanzas:
            if stanza.type != STANZA_TYPE:
                continue
            check_stanza_shape(stanza, n_args=1, body_size=32)
            try:
                share = b64decode(stanza.args[0])
            except ValueError:
                raise HeaderError("X25519 stanza: malformed share") from None
            if len(share) != 32:
                raise HeaderError("X25519 stanza: share must be 32 bytes")
            try:
                shared = self._key.exchange(X25519PublicKey.from_public_bytes(share))
            except ValueError:
                raise HeaderError("X25519 stanza: low-order share") from None
            aead = ChaCha20Poly1305(_wrap_key(shared, share, self._public))
            try:
                return aead.decrypt(_ZERO_NONCE, stanza.body, None)
            except InvalidTag:
                continue
        return None
