"""Post-quantum hybrid keys: mlkem768x25519 recipients (`age1pq1...`) and identities
(`AGE-SECRET-KEY-PQ-1...`).

The stanza is HPKE base mode with the MLKEM768-X25519 KEM (X-Wing), HKDF-SHA256 and
ChaCha20-Poly1305, all done by `cryptography`'s HPKE; this module adds only age's encodings and
the stanza checks the spec demands. A file stays quantum-safe only if *every* recipient is, so
these recipients carry the `postquantum` label and cannot share a file with classic ones.
"""

import os
from collections.abc import Sequence

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.mlkem import MLKEM768PrivateKey, MLKEM768PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.hpke import (
    AEAD,
    KDF,
    KEM,
    MLKEM768X25519PrivateKey,
    MLKEM768X25519PublicKey,
    Suite,
)

from cagefs.age.encoding import b64decode, b64encode, bech32_decode, bech32_encode
from cagefs.age.errors import HeaderError, KeyFormatError
from cagefs.age.header import Stanza
from cagefs.age.recipients import check_stanza_shape

STANZA_TYPE = "mlkem768x25519"
POSTQUANTUM_LABEL = "postquantum"
RECIPIENT_HRP = "age1pq"
IDENTITY_HRP = "age-secret-key-pq-"
SEED_SIZE = 32
ENC_SIZE = 1120  # ML-KEM-768 ciphertext (1088) || X25519 ephemeral share (32)
_MLKEM_PUBLIC_SIZE = 1184
_X25519_SIZE = 32
_MLKEM_CIPHERTEXT_SIZE = ENC_SIZE - _X25519_SIZE
_BODY_SIZE = 32
_INFO = b"age-encryption.org/mlkem768x25519"
_SUITE = Suite(KEM.MLKEM768_X25519, KDF.HKDF_SHA256, AEAD.CHACHA20_POLY1305)


def expand_seed(seed: bytes) -> tuple[MLKEM768PrivateKey, X25519PrivateKey]:
    """The ML-KEM and X25519 halves of an identity: SHAKE256(seed) split 64 + 32 (hpke-pq)."""
    digest = hashes.Hash(hashes.SHAKE256(digest_size=64 + _X25519_SIZE))
    digest.update(seed)
    expanded = digest.finalize()
    return (
        MLKEM768PrivateKey.from_seed_bytes(expanded[:64]),
        X25519PrivateKey.from_private_bytes(expanded[64:]),
    )


class HybridRecipient:
    labels: frozenset[str] = frozenset({POSTQUANTUM_LABEL})

    def __init__(self, public_key: bytes) -> None:
        if len(public_key) != _MLKEM_PUBLIC_SIZE + _X25519_SIZE:
            raise KeyFormatError("malformed age1pq1 recipient (wrong length)")
        try:
            kem_half = MLKEM768PublicKey.from_public_bytes(public_key[:_MLKEM_PUBLIC_SIZE])
            dh_half = X25519PublicKey.from_public_bytes(public_key[_MLKEM_PUBLIC_SIZE:])
        except ValueError:
            raise KeyFormatError("malformed age1pq1 recipient (invalid ML-KEM key)") from None
        self.public_key = public_key
        self._key = MLKEM768X25519PublicKey(kem_half, dh_half)

    @classmethod
    def parse(cls, text: str) -> "HybridRecipient":
        hrp, data = bech32_decode(text)
        if hrp != RECIPIENT_HRP:
            raise KeyFormatError("malformed age1pq1 recipient")
        return cls(data)

    def __str__(self) -> str:
        return bech32_encode(RECIPIENT_HRP, self.public_key)

    def wrap(self, file_key: bytes) -> list[Stanza]:
        sealed = _SUITE.encrypt(file_key, self._key, info=_INFO)
        enc, body = sealed[:ENC_SIZE], sealed[ENC_SIZE:]
        return [Stanza(STANZA_TYPE, (b64encode(enc),), body)]


class HybridIdentity:
    def __init__(
        self, kem_half: MLKEM768PrivateKey, dh_half: X25519PrivateKey, seed: bytes | None = None
    ) -> None:
        """From its two halves; only an identity made from a seed has a text encoding."""
        self._dh_half = dh_half
        self._key = MLKEM768X25519PrivateKey(kem_half, dh_half)
        self._public = (
            kem_half.public_key().public_bytes_raw() + dh_half.public_key().public_bytes_raw()
        )
        self._seed = seed

    @classmethod
    def from_seed(cls, seed: bytes) -> "HybridIdentity":
        if len(seed) != SEED_SIZE:
            raise KeyFormatError("malformed AGE-SECRET-KEY-PQ-1 identity (wrong length)")
        return cls(*expand_seed(seed), seed=seed)

    @classmethod
    def generate(cls) -> "HybridIdentity":
        return cls.from_seed(os.urandom(SEED_SIZE))

    @classmethod
    def parse(cls, text: str) -> "HybridIdentity":
        hrp, data = bech32_decode(text)
        if hrp != IDENTITY_HRP:
            raise KeyFormatError("malformed AGE-SECRET-KEY-PQ-1 identity")
        return cls.from_seed(data)

    def __str__(self) -> str:
        if self._seed is None:
            raise KeyFormatError("this hybrid identity was not made from a seed: no text form")
        return bech32_encode(IDENTITY_HRP, self._seed).upper()

    def recipient(self) -> HybridRecipient:
        return HybridRecipient(self._public)

    def unwrap(self, stanzas: Sequence[Stanza]) -> bytes | None:
        for stanza in stanzas:
            if stanza.type != STANZA_TYPE:
                continue
            check_stanza_shape(stanza, n_args=1, body_size=_BODY_SIZE)
            enc = _decode_enc(stanza.args[0])
            self._refuse_low_order(enc[_MLKEM_CIPHERTEXT_SIZE:])
            try:
                return _SUITE.decrypt(enc + stanza.body, self._key, info=_INFO)
            except InvalidTag:
                continue
        return None

    def _refuse_low_order(self, share: bytes) -> None:
        """An all-zero X25519 secret is forbidden; HPKE would only report it as a bad tag."""
        try:
            self._dh_half.exchange(X25519PublicKey.from_public_bytes(share))
        except ValueError:
            raise HeaderError("mlkem768x25519 stanza: low-order X25519 share") from None


def _decode_enc(text: str) -> bytes:
    try:
        enc = b64decode(text)
    except ValueError:
        raise HeaderError("mlkem768x25519 stanza: malformed encapsulated key") from None
    if len(enc) != ENC_SIZE:
        raise HeaderError(f"mlkem768x25519 stanza: encapsulated key must be {ENC_SIZE} bytes")
    return enc
