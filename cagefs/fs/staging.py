"""Staging for files edited out of order: an overlay of changed 64 KiB blocks over the
file's last complete version.

Blocks match age chunks, so an unchanged block is read by decrypting exactly one chunk of the
old version, and publishing walks the blocks in order into a new version. Changed blocks live
in a `BlockStore`: RAM (`MemoryBlocks`) or a scratch file encrypted under a key that exists only
in this process (`ScratchBlocks`, I1).
"""

import os
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Protocol

from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from cagefs.age import CHUNK_SIZE
from cagefs.fs import heap
from cagefs.store.layout import tmp_dir
from cagefs.store.ranges import Ranges

_ZEROS = bytes(CHUNK_SIZE)
# Blocks written in part and not stored yet, kept in RAM (at most 4 MiB): a 4 KiB write +
# fsync needs neither the base's 64 KiB decrypted nor the block completed, and a line
# appended past the base's end neither a block of zeros encrypted into scratch at each fsync.
# Past this many, the oldest is stored as it is (its bytes written, zeros elsewhere) with the
# other blocks, its base still not read: random writes all over a large file read no base.
PARTIAL_LIMIT = 64
# And at most this many over all the files of a mount (16 MiB): a file past it while others
# hold them stores its own oldest, or the block it is writing when it holds none.
PARTIALS_PER_MOUNT = 256
GIVE_BACK_FROM = 64 * 1024 * 1024  # freeing this much staged RAM returns it to the system


class BlockStore(Protocol):
    """Blocks by index, each up to 64 KiB: `get` gives back the bytes `put` stored."""

    def get(self, index: int) -> bytes | None: ...
    def put(self, index: int, block: bytes) -> None: ...
    def drop_from(self, index: int) -> None: ...
    def items(self) -> Iterator[tuple[int, bytes]]: ...
    def close(self) -> None: ...


class MemoryBlocks:
    """Changed blocks in RAM: fastest, costs the size of what was changed."""

    def __init__(self) -> None:
        self._blocks: dict[int, bytes] = {}

    def get(self, index: int) -> bytes | None:
        return self._blocks.get(index)

    def put(self, index: int, block: bytes) -> None:
        self._blocks[index] = block

    def drop_from(self, index: int) -> None:
        for key in [k for k in self._blocks if k >= index]:
            del self._blocks[key]

    def items(self) -> Iterator[tuple[int, bytes]]:
        yield from list(self._blocks.items())

    def close(self) -> None:
        held = len(self._blocks) * CHUNK_SIZE
        self._blocks.clear()
        if held >= GIVE_BACK_FROM:
            heap.give_back()


class ScratchBlocks:
    """Changed blocks in an unlinked scratch file, each sealed with an ephemeral key (a
    shorter block, the packed bytes of one written in part, seals only its own length).

    Every put uses a fresh random nonce and binds the block index as associated data, so a
    block can neither be read without this process's key nor moved to another slot.
    """

    _NONCE = 12
    _SLOT = _NONCE + CHUNK_SIZE + 16

    def __init__(self, root: Path) -> None:
        self._fd = os.open(tmp_dir(root), os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o600)
        self._aead = ChaCha20Poly1305(ChaCha20Poly1305.generate_key())
        self._present: dict[int, int] = {}  # index -> length of the block stored there
        self._broken: OSError | None = None

    def _check(self) -> None:
        if self._broken is not None:
            raise OSError(self._broken.errno, self._broken.strerror)

    def get(self, index: int) -> bytes | None:
        self._check()
        length = self._present.get(index)
        if length is None:
            return None
        slot = os.pread(self._fd, self._NONCE + length + 16, index * self._SLOT)
        nonce, sealed = slot[: self._NONCE], slot[self._NONCE :]
        return self._aead.decrypt(nonce, sealed, index.to_bytes(8, "big"))

    def put(self, index: int, block: bytes) -> None:
        """Store a block; a full disk raises ENOSPC here, at the write(2) that brought it.

        A short write is retried for the rest (which then reports the error). A slot that
        held a block and failed to take its new one can be neither read nor trusted: the
        store is then broken, and every later call raises that error, never an EIO for a
        bad tag or the block's old content.
        """
        self._check()
        nonce = os.urandom(self._NONCE)
        sealed = memoryview(nonce + self._aead.encrypt(nonce, block, index.to_bytes(8, "big")))
        at = index * self._SLOT
        try:
            while sealed:
                written = os.pwrite(self._fd, sealed, at)
                sealed, at = sealed[written:], at + written
        except OSError as exc:
            if index in self._present:
                self._broken = exc
            raise
        self._present[index] = len(block)

    def drop_from(self, index: int) -> None:
        self._present = {i: n for i, n in self._present.items() if i < index}
        os.ftruncate(self._fd, index * self._SLOT)

    def items(self) -> Iterator[tuple[int, bytes]]:
        for index in sorted(self._present):
            block = self.get(index)
            assert block is not None
            yield index, block

    def close(self) -> None:
        os.close(self._fd)


class PartialBudget:
    """The blocks written in part that a mount's overlays hold in RAM, counted together (an
    overlay may be closed on a worker thread: the count is changed under a lock)."""

    def __init__(self, limit: int = PARTIALS_PER_MOUNT) -> None:
        self.limit = limit
        self.held = 0
        self._lock = threading.Lock()

    def add(self, count: int) -> None:
        with self._lock:
            self.held += count

    @property
    def full(self) -> bool:
        return self.held >= self.limit


def _packed(data: bytearray, written: Ranges) -> bytes:
    """The bytes of `data` that `written` covers, one span after the other."""
    return b"".join(data[start : start + length] for start, length in written.spans())


class Overlay:
    """A file's content as changed blocks over a base version, with POSIX size semantics.

    Bytes at or beyond `size` always read as zeros: truncation zeroes the tail of the block it
    cuts, and `_base_limit` hides base content past the smallest size the file has had since.
    """

    def __init__(
        self,
        blocks: BlockStore,
        size: int,
        read_base_chunk: Callable[[int], bytes] | None,
        budget: PartialBudget | None = None,
    ) -> None:
        self.blocks = blocks
        self.size = size
        self._read_base_chunk = read_base_chunk
        self._base_limit = size if read_base_chunk else 0
        # Blocks written only in part whose base is not read yet: the bytes written, which
        # ones; completed from the base (zeros past it) when the rest is needed (`block`).
        self._partial: dict[int, tuple[bytearray, Ranges]] = {}
        self._budget = budget if budget is not None else PartialBudget(sys.maxsize)
        # Blocks written in part stored in `blocks` (past PARTIAL_LIMIT) as the bytes written,
        # packed: a 4 KiB write stores 4 KiB, not a 64 KiB block of zeros around it.
        self._stored_partial: dict[int, Ranges] = {}
        # Since the last journal record (store/journal.py): bytes changed, smallest size.
        self.unrecorded = Ranges()
        self.cut = size
        self._recorded_size = size

    def block(self, index: int) -> bytes:
        """The full 64 KiB of block `index`, zero-padded (one written in part is completed
        from the base now, and kept)."""
        if index in self._partial or index in self._stored_partial:
            block = self._completed(index)
            self.blocks.put(index, block)
            self._let_go(index)
            self._stored_partial.pop(index, None)
            return block
        stored = self.blocks.get(index)
        return stored if stored is not None else self._base_block(index)

    def _completed(self, index: int) -> bytes:
        """A block written in part, completed from the base (not kept)."""
        if index in self._partial:
            data, written = self._partial[index]
        else:
            written = self._stored_partial[index]
            data = self._stored(index)
        block = bytearray(self._base_block(index))
        for start, length in written.spans():
            block[start : start + length] = data[start : start + length]
        return bytes(block)

    def _base_block(self, index: int) -> bytes:
        start = index * CHUNK_SIZE
        if self._read_base_chunk is None or start >= self._base_limit:
            return _ZEROS
        data = self._read_base_chunk(index)[: self._base_limit - start]
        return data + _ZEROS[len(data) :] if len(data) < CHUNK_SIZE else data

    def read(self, offset: int, length: int) -> bytes:
        end = min(offset + length, self.size)
        if offset >= end:
            return b""
        parts = []
        for index in range(offset // CHUNK_SIZE, (end - 1) // CHUNK_SIZE + 1):
            start = index * CHUNK_SIZE
            low, high = max(offset - start, 0), min(end - start, CHUNK_SIZE)
            partial = self._partial.get(index)
            stored = self._stored_partial.get(index)
            if partial is not None and partial[1].covers(low, high):  # only bytes written
                parts.append(bytes(partial[0][low:high]))
            elif stored is not None and stored.covers(low, high):
                parts.append(self._stored(index)[low:high])
            else:
                parts.append(self.block(index)[low:high])
        return b"".join(parts)

    def write(self, offset: int, data: bytes | memoryview) -> None:
        """Write `data` at `offset`; if a block cannot be stored (a full disk), what came
        before it stays written, and the size covers it."""
        view = memoryview(data)
        position = offset
        try:
            while view:
                index, within = divmod(position, CHUNK_SIZE)
                take = min(CHUNK_SIZE - within, len(view))
                if take == CHUNK_SIZE:
                    self.blocks.put(index, bytes(view[:take]))
                    self._let_go(index)
                    self._stored_partial.pop(index, None)
                elif index in self._stored_partial:
                    self._write_stored_partial(index, within, view[:take])
                else:
                    stored = self.blocks.get(index)
                    if stored is None:  # (past the base too: an append + fsync stores none)
                        self._write_partial(index, within, view[:take])
                    else:
                        block = bytearray(stored if stored is not None else _ZEROS)
                        block[within : within + take] = view[:take]
                        self.blocks.put(index, bytes(block))
                self.unrecorded.add(position, position + take)
                view = view[take:]
                position += take
        finally:
            self.size = max(self.size, position)

    def _write_partial(self, index: int, within: int, piece: memoryview) -> None:
        entry = self._partial.get(index)
        if entry is None:
            if len(self._partial) >= PARTIAL_LIMIT or self._budget.full:
                if not self._partial:  # other files hold the mount's share: stored as written
                    written = Ranges()
                    written.add(within, within + len(piece))
                    self._store_packed(index, bytes(piece), written)  # (a full disk: no change)
                    return
                self._store_partial(next(iter(self._partial)))  # the oldest: RAM bounded
            entry = self._partial[index] = (bytearray(CHUNK_SIZE), Ranges())
            self._budget.add(1)
        data, written = entry
        data[within : within + len(piece)] = piece
        written.add(within, within + len(piece))
        if written.covers(0, CHUNK_SIZE):
            self.blocks.put(index, bytes(data))
            self._let_go(index)

    def _let_go(self, index: int) -> None:
        """Block `index` is no longer held in RAM as written in part (if it was)."""
        if self._partial.pop(index, None) is not None:
            self._budget.add(-1)

    def _store_partial(self, index: int) -> None:
        """A block written in part moves from RAM to `blocks`, as written (base not read)."""
        data, written = self._partial[index]
        self._store_packed(index, _packed(data, written), written)
        self._let_go(index)

    def _store_packed(self, index: int, packed: bytes, written: Ranges) -> None:
        """Block `index` stored as the bytes `written` covers, one span after the other."""
        self.blocks.put(index, packed)
        self._stored_partial[index] = written

    def _write_stored_partial(self, index: int, within: int, piece: memoryview) -> None:
        written = self._stored_partial[index]
        data = self._stored(index)
        data[within : within + len(piece)] = piece
        added = Ranges()
        for start, length in written.spans():
            added.add(start, start + length)
        added.add(within, within + len(piece))
        if added.covers(0, CHUNK_SIZE):
            self.blocks.put(index, bytes(data))
            del self._stored_partial[index]
        else:
            self._store_packed(index, _packed(data, added), added)

    def _stored(self, index: int) -> bytearray:
        """A block written in part and stored: its bytes in place, zeros elsewhere."""
        packed = self.blocks.get(index)
        assert packed is not None, f"block {index} written in part is not stored"
        data, at = bytearray(CHUNK_SIZE), 0
        for start, length in self._stored_partial[index].spans():
            data[start : start + length] = packed[at : at + length]
            at += length
        return data

    def truncate(self, size: int) -> None:
        if size < self.size:
            index, within = divmod(size, CHUNK_SIZE)
            if within:
                block = bytearray(self.block(index))
                block[within:] = bytes(CHUNK_SIZE - within)
                self.blocks.put(index, bytes(block))
                index += 1
            self.blocks.drop_from(index)
            for gone in [i for i in self._partial if i >= index]:
                self._let_go(gone)
            for gone in [i for i in self._stored_partial if i >= index]:
                del self._stored_partial[gone]
            self.unrecorded.clip(size)  # (a record's `cut` zeroes the rest)
            self._base_limit = min(self._base_limit, size)
            self.cut = min(self.cut, size)
        self.size = size

    @property
    def recorded(self) -> bool:
        """Nothing changed since the last journal record."""
        return not self.unrecorded and self.cut == self.size == self._recorded_size

    def mark_recorded(self) -> None:
        self.unrecorded = Ranges()
        self.cut = self._recorded_size = self.size

    def chunks(self) -> Iterator[bytes]:
        """The whole content in order, one block at a time, for publishing."""
        for index in range(-(-self.size // CHUNK_SIZE)):
            partial = index in self._partial or index in self._stored_partial
            block = self._completed(index) if partial else self.block(index)
            yield block[: self.size - index * CHUNK_SIZE]

    def move_to(self, blocks: BlockStore) -> None:
        """Carry the changed blocks over to another store (RAM -> scratch as a file grows)."""
        try:
            for index, block in self.blocks.items():
                blocks.put(index, block)
        except BaseException:
            blocks.close()
            raise
        self.blocks.close()
        self.blocks = blocks

    def close(self) -> None:
        for index in list(self._partial):
            self._let_go(index)
        self._stored_partial.clear()
        self.blocks.close()
