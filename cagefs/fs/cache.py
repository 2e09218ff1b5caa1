"""A bounded cache of decrypted chunks, shared by all open files (I5, I7).

Small reads of the same chunk (sqlite pages, editors, the kernel's 4 KiB faults under mmap)
then cost one decryption instead of one per read. Entries are keyed by a version id that is
never reused, so a new version of a file can never be served stale chunks.
"""

import itertools
from collections import OrderedDict

from cagefs.age import CHUNK_SIZE

_version_ids = itertools.count(1)


def new_version_id() -> int:
    return next(_version_ids)


class ChunkCache:
    def __init__(self, limit_bytes: int) -> None:
        self._capacity = max(1, limit_bytes // CHUNK_SIZE)
        self._chunks: OrderedDict[tuple[int, int], bytes] = OrderedDict()

    @property
    def used_bytes(self) -> int:
        return sum(len(chunk) for chunk in self._chunks.values())

    @property
    def limit_bytes(self) -> int:
        return self._capacity * CHUNK_SIZE

    def get(self, version: int, index: int) -> bytes | None:
        key = (version, index)
        chunk = self._chunks.get(key)
        if chunk is not None:
            self._chunks.move_to_end(key)
        return chunk

    def put(self, version: int, index: int, chunk: bytes) -> None:
        self._chunks[(version, index)] = chunk
        self._chunks.move_to_end((version, index))
        while len(self._chunks) > self._capacity:
            self._chunks.popitem(last=False)
