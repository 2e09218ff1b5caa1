"""The age STREAM payload: a 16-byte nonce, then 64 KiB plaintext chunks each sealed with
ChaCha20-Poly1305 under a key derived from the file key and the nonce.

Because every chunk has a fixed ciphertext size and its index in the nonce, any chunk can be
decrypted on its own: `PayloadReader` serves random reads from a file descriptor, decrypting
only the chunks a read covers. `PayloadWriter` takes pushed bytes of any size and never holds
more than one batch of plaintext.

Speed (measured with bench/crypto.py on a 2-core machine):
- Chunks are sealed and opened with `encrypt_into`/`decrypt_into` straight into one output
  buffer per batch of `BATCH_CHUNKS` chunks: a fresh 64 KiB `bytes` per chunk plus a join
  cost about half the throughput. One sink call per batch, not per chunk.
- `cryptography` releases the GIL inside the AEAD, so the chunks of a batch are dealt to the
  calling thread and a small shared pool (`crypto_threads()` threads in all). Batches smaller
  than `_PARALLEL_MIN_CHUNKS` stay on the calling thread, where a hand-over costs more than it
  saves. When the other core is busy the pool gains nothing and costs a few percent; the bench
  prints the engine with its default and with one thread, and `set_crypto_threads(1)` turns
  the pool off.
- Memory is bounded by a batch: the writer holds at most 2 MiB of plaintext plus one sealed
  batch, the stream decryptor 2 MiB of ciphertext plus one opened batch.
"""

import functools
import itertools
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from cagefs.age.errors import HeaderError, PayloadError
from cagefs.age.header import hkdf_sha256
from cagefs.pools import LazyPool

CHUNK_SIZE = 64 * 1024
TAG_SIZE = 16
CHUNK_CT_SIZE = CHUNK_SIZE + TAG_SIZE
NONCE_SIZE = 16
BATCH_CHUNKS = 32  # chunks sealed/opened per batch: 2 MiB, the unit of memory and of sink calls
_PENDING_MAX = BATCH_CHUNKS * CHUNK_SIZE  # plaintext a writer collects before sealing
_SEALED_MAX = BATCH_CHUNKS * CHUNK_CT_SIZE
_PARALLEL_MIN_CHUNKS = 4
_LAST = b"\x01"
_NOT_LAST = b"\x00"

Buffer = bytes | bytearray | memoryview
Sink = Callable[[Buffer], object]
Pread = Callable[[int, int], Buffer]


class LendingSink(Protocol):
    """A sink that lends the buffer each batch is sealed into, which saves copying every byte
    from the writer's buffer to the sink's: `lend(n)` returns a writable view of n bytes, and
    the sink's next call is passed that very view, filled."""

    def __call__(self, data: Buffer) -> object: ...

    def lend(self, size: int) -> memoryview: ...


def chunk_count(plaintext_size: int) -> int:
    """Number of chunks; an empty payload still has one (empty, final) chunk."""
    return max(1, -(-plaintext_size // CHUNK_SIZE))


def payload_size(plaintext_size: int) -> int:
    """Ciphertext bytes after the header for this much plaintext, nonce included."""
    return NONCE_SIZE + plaintext_size + TAG_SIZE * chunk_count(plaintext_size)


def plaintext_size(payload_bytes: int) -> int:
    """Plaintext size for a payload of this many bytes (nonce included), without decrypting.

    Raises PayloadError for sizes no valid payload can have; a payload that was cut at a
    plausible size is caught later, when its last chunk fails authentication.
    """
    if payload_bytes < NONCE_SIZE:
        raise HeaderError("file is truncated after the header (short payload nonce)")
    sealed = payload_bytes - NONCE_SIZE
    if sealed < TAG_SIZE:
        raise PayloadError("payload is truncated (no complete chunk)")
    n_chunks = -(-sealed // CHUNK_CT_SIZE)
    last = sealed - (n_chunks - 1) * CHUNK_CT_SIZE
    if last < TAG_SIZE:
        raise PayloadError("payload is truncated or has trailing data (partial chunk)")
    if last == TAG_SIZE and n_chunks > 1:
        raise PayloadError("payload ends with an empty chunk after a full one")
    return sealed - n_chunks * TAG_SIZE


# ---------------------------------------------------------------- parallel batches

_threads = os.cpu_count() or 1


def crypto_threads() -> int:
    """How many threads (the caller included) share one batch of chunks."""
    return _threads


def set_crypto_threads(count: int) -> None:
    """Set the threads per batch; 1 keeps all work on the calling thread (used by the bench)."""
    global _threads
    _threads = max(1, count)


_helpers = LazyPool("age", lambda: max(1, _threads - 1))  # the caller is the other thread


def _spread(count: int, job: Callable[[int], None]) -> None:
    """Run `job(i)` for every i in [0, count), on the caller and the helper pool together.

    Work is dealt one chunk at a time from a shared counter rather than in fixed halves: on a
    shared machine a helper can be descheduled, and fixed halves would leave the caller waiting
    for it. For the same reason a helper that has not started by the time the caller ran out
    of work is cancelled, not waited for. Every helper that did start is waited for before
    returning or raising, so that none still writes into a buffer the caller is about to
    reuse; the first error (a PayloadError) is re-raised.
    """
    if _threads == 1 or count < _PARALLEL_MIN_CHUNKS:
        for i in range(count):
            job(i)
        return
    deal = itertools.count()  # next() on it is atomic under the GIL

    def work() -> None:
        for i in deal:
            if i >= count:
                return
            job(i)

    pool = _helpers()
    futures: list[Future[None]] = [pool.submit(work) for _ in range(_threads - 1)]
    error: BaseException | None = None
    try:
        work()
    except BaseException as exc:
        error = exc
    for future in futures:
        if not future.cancel():
            error = error or future.exception()
    if error is not None:
        raise error


class ChunkCipher:
    """Seals and opens individual chunks of one payload, alone or in batches."""

    def __init__(self, payload_key: bytes) -> None:
        self.payload_key = payload_key
        self._aead = ChaCha20Poly1305(payload_key)

    @classmethod
    def for_payload(cls, file_key: bytes, nonce: bytes) -> "ChunkCipher":
        """The cipher of the payload that starts with `nonce` in a file with this file key."""
        if len(nonce) != NONCE_SIZE:
            raise HeaderError("file is truncated after the header (short payload nonce)")
        return cls(hkdf_sha256(file_key, nonce, b"payload"))

    @staticmethod
    def _nonce(index: int, last: bool) -> bytes:
        return index.to_bytes(11, "big") + (_LAST if last else _NOT_LAST)

    def seal(self, index: int, plaintext: Buffer, last: bool) -> bytes:
        return self._aead.encrypt(self._nonce(index, last), plaintext, None)

    def open(self, index: int, ciphertext: Buffer, last: bool) -> bytes:
        """The plaintext of one chunk; PayloadError if forged. A new `bytes`, filled by the
        AEAD itself: opening into a zeroed buffer and copying it out cost a tenth more."""
        self._check_length(index, ciphertext, last)
        try:
            return self._aead.decrypt(self._nonce(index, last), ciphertext, None)
        except InvalidTag:
            raise PayloadError(f"payload chunk {index} failed authentication") from None

    def seal_into(self, index: int, plaintext: Buffer, last: bool, out: Buffer) -> None:
        """Seal into `out`, which must be exactly len(plaintext) + TAG_SIZE bytes."""
        self._aead.encrypt_into(self._nonce(index, last), plaintext, None, out)

    def open_into(self, index: int, ciphertext: Buffer, last: bool, out: Buffer) -> None:
        """Open into `out` (exactly len(ciphertext) - TAG_SIZE bytes); PayloadError if forged."""
        self._check_length(index, ciphertext, last)
        try:
            self._aead.decrypt_into(self._nonce(index, last), ciphertext, None, out)
        except InvalidTag:
            raise PayloadError(f"payload chunk {index} failed authentication") from None

    @staticmethod
    def _check_length(index: int, ciphertext: Buffer, last: bool) -> None:
        if len(ciphertext) < TAG_SIZE:
            raise PayloadError(f"payload chunk {index} is truncated")
        if last and len(ciphertext) == TAG_SIZE and index > 0:
            raise PayloadError("payload ends with an empty chunk after a full one")

    def seal_many(
        self, first: int, chunks: Sequence[Buffer], outs: Sequence[Buffer], final: bool
    ) -> None:
        """Seal chunks `first`, `first`+1, ... into `outs`; `final` marks the last one as last."""
        last_index = len(chunks) - 1

        def job(i: int) -> None:
            self.seal_into(first + i, chunks[i], final and i == last_index, outs[i])

        _spread(len(chunks), job)

    def open_many(
        self, first: int, chunks: Sequence[Buffer], outs: Sequence[Buffer], final: bool
    ) -> None:
        """Open chunks `first`, `first`+1, ... into `outs`; `final`: the last one is the last."""
        last_index = len(chunks) - 1

        def job(i: int) -> None:
            self.open_into(first + i, chunks[i], final and i == last_index, outs[i])

        _spread(len(chunks), job)


def _slices(buffer: Buffer, size: int, step: int) -> list[memoryview]:
    """`buffer[:size]` cut into views of `step` bytes (the last may be shorter)."""
    view = memoryview(buffer)
    return [view[i : min(i + step, size)] for i in range(0, size, step)]


def _seal_batch(
    cipher: ChunkCipher, first: int, chunks: list[memoryview], final: bool, out: memoryview
) -> None:
    """Seal `chunks` back to back into `out`, which is exactly their sealed size."""
    outs, at = [], 0
    for chunk in chunks:
        outs.append(out[at : at + len(chunk) + TAG_SIZE])
        at += len(chunk) + TAG_SIZE
    cipher.seal_many(first, chunks, outs, final)


def _opened_batch(
    cipher: ChunkCipher, first: int, chunks: list[memoryview], final: bool, out: Buffer
) -> memoryview:
    """The plaintext of `chunks` (each a whole sealed chunk), opened into the start of `out`."""
    size = sum(len(c) for c in chunks) - TAG_SIZE * len(chunks)
    outs = _slices(out, size, CHUNK_SIZE)
    if final and len(chunks) > len(outs):  # the empty last chunk of an empty payload
        outs.append(memoryview(out)[size:size])
    cipher.open_many(first, chunks, outs, final)
    return memoryview(out)[:size]


@dataclass(frozen=True)
class PayloadState:
    """A payload partly written, with what another writer needs to go on where it stopped.

    It carries the payload key, never the file key: whoever continues the payload can seal its
    chunks but cannot read or forge the header's recipient stanzas.
    """

    payload_key: bytes
    next_chunk: int
    pending: bytes  # plaintext accepted but not sealed yet (the held-back chunk, and more)
    written: int  # plaintext bytes accepted so far, pending included


class PayloadWriter:
    """Encrypts pushed plaintext into `sink`; `close()` seals the final chunk.

    The chunk that ends the data written so far is held back, because only `close()` knows
    whether it is the last one (its nonce differs). Small writes collect in a fixed
    `BATCH_CHUNKS`-chunk buffer so that they are still sealed in parallel batches; whole chunks
    of a large write are sealed straight from the caller's buffer and only its tail (at most one
    chunk) is copied. Memory stays constant: that buffer plus one sealed batch.
    Each sink call gets up to BATCH_CHUNKS sealed chunks in a buffer that the next call reuses
    (a fresh zero-filled buffer per batch cost 10-15 % of the throughput): the sink must write
    or copy it before returning, never keep it. A `LendingSink` lends that buffer instead.
    """

    def __init__(self, sink: Sink | LendingSink, file_key: bytes) -> None:
        nonce = os.urandom(NONCE_SIZE)
        self._start(sink, ChunkCipher.for_payload(file_key, nonce))
        sink(nonce)

    @classmethod
    def resume(cls, sink: Sink | LendingSink, state: PayloadState) -> "PayloadWriter":
        """Go on with a payload another writer handed over (`hand_over`), appending to `sink`."""
        writer = cls.__new__(cls)
        writer._start(sink, ChunkCipher(state.payload_key))
        writer._index = state.next_chunk
        writer.plaintext_written = state.written - len(state.pending)
        writer.write(state.pending)
        return writer

    def _start(self, sink: Sink | LendingSink, cipher: ChunkCipher) -> None:
        self._cipher = cipher
        self._sink = sink
        self._lend: Callable[[int], memoryview] = getattr(sink, "lend", self._own_buffer)
        self._pending = bytearray()  # grown as needed, up to _PENDING_MAX
        self._sealed: memoryview | None = None
        self._fill = 0
        self._index = 0
        self.plaintext_written = 0
        self.closed = False

    def hand_over(self) -> PayloadState:
        """Stop here and return what another writer needs to continue the same payload.

        Everything sealed so far has reached the sink; this writer takes no more writes.
        """
        if self.closed:
            raise ValueError("hand over of a closed payload")
        self.closed = True
        pending = bytes(self._pending[: self._fill])
        self._let_go()
        return PayloadState(self._cipher.payload_key, self._index, pending, self.plaintext_written)

    def write(self, data: Buffer) -> int:
        if self.closed:
            raise ValueError("write to a closed payload")
        view = memoryview(data).cast("B")
        size = len(view)
        self.plaintext_written += size
        view = self._top_up(view, -self._fill % CHUNK_SIZE)
        if not view:
            return size
        if len(view) <= CHUNK_SIZE and self._fill < _PENDING_MAX:
            self._top_up(view, len(view))
            return size
        # More data follows every pending chunk and every whole chunk of `view` but its last.
        chunks = _slices(self._pending, self._fill, CHUNK_SIZE)
        whole = (len(view) - 1) // CHUNK_SIZE
        for i in range(whole):
            if len(chunks) == BATCH_CHUNKS:  # the pending chunks alone may fill a batch
                self._emit(chunks, final=False)
                chunks = []
            chunks.append(view[i * CHUNK_SIZE : (i + 1) * CHUNK_SIZE])
        if chunks:
            self._emit(chunks, final=False)
        self._fill = 0
        self._top_up(view[whole * CHUNK_SIZE :], CHUNK_SIZE)
        return size

    def close(self) -> None:
        if not self.closed:
            chunks = _slices(self._pending, self._fill, CHUNK_SIZE) or [memoryview(b"")]
            self._emit(chunks, final=True)
            self._fill = 0
            self.closed = True
            self._let_go()

    def _let_go(self) -> None:
        """A finished writer may live on (a version waiting to be published holds it), and a
        mount can have thousands of those: keep no buffers."""
        self._pending = bytearray()
        self._sealed = None

    def _top_up(self, view: memoryview, limit: int) -> memoryview:
        """Copy up to `limit` bytes of `view` into the pending buffer; return the rest."""
        take = min(limit, len(view))
        if self._fill + take > len(self._pending):
            self._grow_pending(self._fill + take)
        self._pending[self._fill : self._fill + take] = view[:take]
        self._fill += take
        return view[take:]

    def _emit(self, chunks: list[memoryview], final: bool) -> None:
        out = self._lend(sum(len(c) for c in chunks) + TAG_SIZE * len(chunks))
        _seal_batch(self._cipher, self._index, chunks, final, out)
        self._sink(out)
        self._index += len(chunks)

    def _grow_pending(self, need: int) -> None:
        """Small files never get a whole batch buffer; growth is by a fresh buffer, because
        views of the old one may still be alive (a bytearray cannot resize under them)."""
        grown = bytearray(min(max(need, 2 * len(self._pending)), _PENDING_MAX))
        grown[: self._fill] = self._pending[: self._fill]
        self._pending = grown

    def _own_buffer(self, size: int) -> memoryview:
        """The lending of a sink that lends nothing: one buffer, reused, as large as needed."""
        if self._sealed is None or len(self._sealed) < size:
            self._sealed = memoryview(bytearray(size if self._sealed is None else _SEALED_MAX))
        return self._sealed[:size]


class PayloadReader:
    """Random access to the plaintext of a payload stored at `offset` in a file descriptor.

    The plaintext size comes from the file size alone (I5); each read decrypts only the chunks
    it covers, whole chunks straight into the caller's buffer (`readinto`), in parallel batches.
    Safe to share between threads: a read keeps no state in the reader (but for remembering
    that an empty payload's one chunk has been authenticated).
    """

    def __init__(self, fd: int, offset: int, file_key: bytes, file_size: int | None = None) -> None:
        self._fd = fd
        self._base = offset + NONCE_SIZE
        if file_size is None:
            file_size = os.fstat(fd).st_size
        self.size = plaintext_size(file_size - offset)
        self._n_chunks = chunk_count(self.size)
        self._cipher = ChunkCipher.for_payload(file_key, os.pread(fd, NONCE_SIZE, offset))
        self._empty_checked = False

    def read_chunk(self, index: int) -> bytes:
        last = index == self._n_chunks - 1
        want = self.size - index * CHUNK_SIZE + TAG_SIZE if last else CHUNK_CT_SIZE
        ciphertext = os.pread(self._fd, want, self._base + index * CHUNK_CT_SIZE)
        if len(ciphertext) != want:
            raise PayloadError("payload is truncated (file shrank while reading)")
        return self._cipher.open(index, ciphertext, last)

    def ciphertext_span(self, offset: int, length: int) -> tuple[int, int]:
        """The file range [start, stop) that a read of plaintext [offset, offset+length) reads;
        empty (stop <= start) past the end."""
        end = min(offset + length, self.size)
        if offset >= end:
            return self._base, self._base
        first, stop = offset // CHUNK_SIZE, (end - 1) // CHUNK_SIZE + 1
        sealed_end = min(stop * CHUNK_CT_SIZE, self.size + TAG_SIZE * stop)
        return self._base + first * CHUNK_CT_SIZE, self._base + sealed_end

    def read(self, offset: int, length: int) -> bytes:
        """Up to `length` bytes at `offset`; short only at end of file."""
        buffer = bytearray(max(0, min(length, self.size - offset)))
        return bytes(memoryview(buffer)[: self.readinto(offset, buffer)])

    def readinto(self, offset: int, buffer: Buffer, pread: Pread | None = None) -> int:
        """Fill `buffer` with plaintext from `offset`; returns the count, short only at the end.

        `pread(size, offset)` reads the ciphertext (os.pread on the descriptor by default; a
        read-ahead passes its own); what it returns need only stay valid until its next call.
        """
        pread = pread or functools.partial(os.pread, self._fd)
        out = memoryview(buffer).cast("B")
        end = min(offset + len(out), self.size)
        if offset >= end:
            if self.size == 0 and not self._empty_checked:
                self._check_empty()
            return 0
        first = offset // CHUNK_SIZE
        for start in range(first, (end - 1) // CHUNK_SIZE + 1, BATCH_CHUNKS):
            stop = min(start + BATCH_CHUNKS, (end - 1) // CHUNK_SIZE + 1)
            self._read_batch(start, stop, offset, end, out, pread)
        return end - offset

    def _check_empty(self) -> None:
        """An empty payload still ends with a sealed empty chunk: a read at its end checks that
        chunk once, so that a forged or swapped empty file fails like any other would."""
        self.read_chunk(0)
        self._empty_checked = True  # only ever set after success: a race merely checks twice

    def _read_batch(
        self, start: int, stop: int, offset: int, end: int, out: memoryview, pread: Pread
    ) -> None:
        """Decrypt chunks [start, stop) and place the part of [offset, end) they hold in `out`.

        Chunks wholly inside the range open straight into `out`; a chunk cut by the range
        (at most the first and the last) opens into a scratch buffer and is copied.
        """
        want = min(stop * CHUNK_CT_SIZE, self.size + TAG_SIZE * stop) - start * CHUNK_CT_SIZE
        ciphertext = pread(want, self._base + start * CHUNK_CT_SIZE)
        if len(ciphertext) != want:
            raise PayloadError("payload is truncated (file shrank while reading)")
        chunks = _slices(ciphertext, want, CHUNK_CT_SIZE)
        outs: list[Buffer] = []
        cut: list[tuple[int, bytearray]] = []
        for index in range(start, stop):
            lo, hi = index * CHUNK_SIZE, min((index + 1) * CHUNK_SIZE, self.size)
            if offset <= lo and hi <= end:
                outs.append(out[lo - offset : hi - offset])
            else:
                scratch = bytearray(hi - lo)
                outs.append(scratch)
                cut.append((index, scratch))
        self._cipher.open_many(start, chunks, outs, final=stop == self._n_chunks)
        for index, scratch in cut:
            lo = max(offset, index * CHUNK_SIZE)
            hi = min(end, index * CHUNK_SIZE + len(scratch))
            out[lo - offset : hi - offset] = scratch[
                lo - index * CHUNK_SIZE : hi - index * CHUNK_SIZE
            ]


def decrypt_payload_stream(
    read: Callable[[int], bytes],
    sink: Sink | LendingSink,
    file_key: bytes,
    readinto: Callable[[memoryview], int | None] | None = None,
) -> None:
    """Decrypt a payload that can only be read forward (a pipe), in constant memory.

    It is read in blocks of one batch of sealed chunks into one reused buffer; pass the
    source's `readinto` when it has one: it fills that buffer without the extra copy a `read`
    result needs. See `decrypt_payload_blocks` for the sink.
    """
    decrypt_payload_blocks(_read_blocks(read, readinto), sink, file_key)


def decrypt_payload_blocks(
    blocks: Iterable[Buffer], sink: Sink | LendingSink, file_key: bytes
) -> None:
    """Decrypt a payload that arrives as consecutive blocks of any sizes, in constant memory.

    A block need only stay valid until the next one is asked for, so a reader may reuse its
    buffers. Chunks are opened straight from the blocks in parallel batches; only a chunk cut
    by a block boundary, and the chunk that ends each block (the last one, unless more
    follows), are copied aside. Each batch is opened into one reused buffer (or one the sink
    lends) for the sink, which must write or copy it before returning.
    """
    opener = _StreamOpener(sink, file_key)
    for block in blocks:
        opener.feed(block)
    opener.finish()


class _StreamOpener:
    """The state of `decrypt_payload_blocks`: the payload nonce as it arrives, and the chunk
    that ends what was fed so far (whether it is the last is known only once more arrives)."""

    def __init__(self, sink: Sink | LendingSink, file_key: bytes) -> None:
        self._sink = sink
        self._file_key = file_key
        self._nonce = bytearray()
        self._cipher: ChunkCipher | None = None
        self._index = 0
        self._held = bytearray(CHUNK_CT_SIZE)
        self._fill = 0
        self._opened: bytearray | None = None
        self._lend: Callable[[int], Buffer] = getattr(sink, "lend", self._own_buffer)

    def feed(self, block: Buffer) -> None:
        view = memoryview(block).cast("B")
        if self._cipher is None:
            view = self._take_nonce(view)
            if self._cipher is None:
                return
        chunks: list[memoryview] = []
        if self._fill:
            take = min(CHUNK_CT_SIZE - self._fill, len(view))
            self._held[self._fill : self._fill + take] = view[:take]
            self._fill += take
            view = view[take:]
            if not view:  # nothing follows the held chunk yet: it may be the last
                return
            chunks.append(memoryview(self._held))
        if not view:
            return
        whole = (len(view) - 1) // CHUNK_CT_SIZE  # a byte follows each of these
        chunks += _slices(view, whole * CHUNK_CT_SIZE, CHUNK_CT_SIZE)
        for at in range(0, len(chunks), BATCH_CHUNKS):
            self._open(chunks[at : at + BATCH_CHUNKS], final=False)
        rest = view[whole * CHUNK_CT_SIZE :]
        self._held[: len(rest)] = rest
        self._fill = len(rest)

    def finish(self) -> None:
        if self._cipher is None:
            raise HeaderError("file is truncated after the header (short payload nonce)")
        if self._index == 0 and self._fill < TAG_SIZE:
            raise PayloadError("payload is truncated")
        if self._fill < TAG_SIZE:  # the final chunk cannot be shorter than its tag
            raise PayloadError("payload is truncated or has trailing data (partial chunk)")
        self._open([memoryview(self._held)[: self._fill]], final=True)

    def _take_nonce(self, view: memoryview) -> memoryview:
        take = NONCE_SIZE - len(self._nonce)
        self._nonce += view[:take]
        if len(self._nonce) == NONCE_SIZE:
            self._cipher = ChunkCipher.for_payload(self._file_key, bytes(self._nonce))
        return view[take:]

    def _open(self, chunks: list[memoryview], final: bool) -> None:
        assert self._cipher is not None
        size = sum(len(c) for c in chunks) - TAG_SIZE * len(chunks)
        self._sink(_opened_batch(self._cipher, self._index, chunks, final, self._lend(size)))
        self._index += len(chunks)

    def _own_buffer(self, size: int) -> bytearray:
        if self._opened is None:
            self._opened = bytearray(BATCH_CHUNKS * CHUNK_SIZE)
        return self._opened


def _read_blocks(
    read: Callable[[int], bytes], readinto: Callable[[memoryview], int | None] | None
) -> Iterator[memoryview]:
    """The source in blocks of one sealed batch, read into one buffer that each block reuses."""
    view = memoryview(bytearray(_SEALED_MAX))
    while True:
        fill = 0
        while fill < len(view):
            if readinto is not None:
                got = readinto(view[fill:]) or 0
            else:
                data = read(len(view) - fill)
                got = len(data)
                view[fill : fill + got] = data
            if not got:
                break
            fill += got
        if fill:
            yield view[:fill]
        if fill < len(view):
            return
