"""File keys a mount has already unwrapped or made, so that opening a file again skips X25519.

Unwrapping a file key is a pure function of the header's stanzas and the identities: the same
stanzas always give the same key. So a key is remembered by a digest of the exact stanzas
(every recipient stanza and the proof of origin), never by a name, inode or version that can
change under it: a file replaced, renamed or rewritten has a new header, hence a new entry, and
an old entry can only ever be the right answer. The header's MAC and the proof of origin are
still checked with the key at every open (`age.file.open_file`). Bounded (I7).
"""

import threading
from collections import OrderedDict
from collections.abc import Sequence
from hashlib import sha256

from cagefs.age import Identity, Recipient
from cagefs.age.header import Stanza

DEFAULT_LIMIT = 32_768  # about 200 bytes each (digest, key, the entry): 6.6 MB


class FileKeys:
    """An identity in front of the real ones that answers from the keys it has seen."""

    def __init__(self, identities: Sequence[Identity], limit: int = DEFAULT_LIMIT) -> None:
        self._identities = tuple(identities)
        self._limit = limit
        self._keys: OrderedDict[bytes, bytes] = OrderedDict()
        self._lock = threading.Lock()  # new versions made ahead remember theirs on a thread

    def __len__(self) -> int:
        return len(self._keys)

    def unwrap(self, stanzas: Sequence[Stanza]) -> bytes | None:
        digest = _digest(stanzas)
        with self._lock:
            file_key = self._keys.get(digest)
            if file_key is not None:
                self._keys.move_to_end(digest)
                return file_key
        for identity in self._identities:
            file_key = identity.unwrap(stanzas)
            if file_key is not None:
                self._put(digest, file_key)
                return file_key
        return None

    def remember(self, stanzas: Sequence[Stanza], file_key: bytes) -> None:
        """A header this mount wrote: `stanzas` are all of its stanzas, in order."""
        self._put(_digest(stanzas), file_key)

    def recipient(self) -> Recipient:
        return self._identities[0].recipient()

    def _put(self, digest: bytes, file_key: bytes) -> None:
        with self._lock:
            self._keys[digest] = file_key
            self._keys.move_to_end(digest)
            while len(self._keys) > self._limit:
                self._keys.popitem(last=False)


def _digest(stanzas: Sequence[Stanza]) -> bytes:
    """Canonical stanza encodings concatenate unambiguously (each ends its own last line)."""
    return sha256(b"".join(stanza.encode() for stanza in stanzas)).digest()
