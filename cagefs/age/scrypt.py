"""Passphrase encryption: the scrypt recipient and identity.

A hostile file could ask for an enormous work factor and hang or exhaust the machine, so the
identity refuses anything above MAX_LOG_N before running scrypt.
"""

import os
import re
from collections.abc import Sequence

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from cagefs.age.encoding import b64decode, b64encode
from cagefs.age.errors import HeaderError
from cagefs.age.header import Stanza
from cagefs.age.recipients import check_stanza_shape

STANZA_TYPE = "scrypt"
DEFAULT_LOG_N = 18
MAX_LOG_N = 22
_SALT_LABEL = b"age-encryption.org/v1/scrypt"
_ZERO_NONCE = bytes(12)
_DECIMAL = re.compile(r"[1-9][0-9]{0,2}")


def _derive(passphrase: bytes, salt: bytes, log_n: int) -> bytes:
    kdf = Scrypt(salt=_SALT_LABEL + salt, length=32, n=1 << log_n, r=8, p=1)
    return kdf.derive(passphrase)


class ScryptRecipient:
    def __init__(self, passphrase: bytes, log_n: int = DEFAULT_LOG_N) -> None:
        self._passphrase = passphrase
        self._log_n = log_n
        # A label no other recipient has: the spec requires scrypt to be alone in a header.
        self.labels = frozenset({f"scrypt-{os.urandom(8).hex()}"})

    def wrap(self, file_key: bytes) -> list[Stanza]:
        salt = os.urandom(16)
        key = _derive(self._passphrase, salt, self._log_n)
        body = ChaCha20Poly1305(key).encrypt(_ZERO_NONCE, file_key, None)
        return [Stanza(STANZA_TYPE, (b64encode(salt), str(self._log_n)), body)]


class ScryptIdentity:
    def __init__(self, passphrase: bytes, max_log_n: int = MAX_LOG_N) -> None:
        self._passphrase = passphrase
        self._max_log_n = max_log_n

    def unwrap(self, stanzas: Sequence[Stanza]) -> bytes | None:
        for stanza in stanzas:
            if stanza.type != STANZA_TYPE:
                continue
            check_stanza_shape(stanza, n_args=2, body_size=32)
            salt_text, log_n_text = stanza.args
            try:
                salt = b64decode(salt_text)
            except ValueError:
                raise HeaderError("scrypt stanza: malformed salt") from None
            if len(salt) != 16:
                raise HeaderError("scrypt stanza: salt must be 16 bytes")
            if not _DECIMAL.fullmatch(log_n_text):
                raise HeaderError("scrypt stanza: malformed work factor")
            log_n = int(log_n_text)
            if log_n > self._max_log_n:
                raise HeaderError(
                    f"scrypt work factor 2^{log_n} exceeds the limit 2^{self._max_log_n}"
                )
            key = _derive(self._passphrase, salt, log_n)
            try:
                return ChaCha20Poly1305(key).decrypt(_ZERO_NONCE, stanza.body, None)
            except InvalidTag:
                continue
        return None
