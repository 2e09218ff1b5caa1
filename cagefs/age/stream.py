"""The age STREAM payload: a 16-byte nonce, then 64 KiB plaintext chunks each sealed with
ChaCha20-Poly1305 under a key derived from the file key and the nonce.

Because every chunk has a fixed ciphertext size and its index in the nonce, any chunk can be
decrypted on its own: `PayloadReader` serves random reads from a file descriptor, decrypting
only the chunks a read covers. `PayloadWriter` takes pushed bytes of any size and never holds
more than one chunk of plaintext.
"""

import os
from collections.abc import Callable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from cagefs.age.errors import HeaderError, PayloadError
from cagefs.age.header import hkdf_sha256

CHUNK_SIZE = 64 * 1024
TAG_SIZE = 16
CHUNK_CT_SIZE = CHUNK_SIZE + TAG_SIZE
NONCE_SIZE = 16
_LAST = b"\x01"
_NOT_LAST = b"\x00"


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


class ChunkCipher:
    """Seals and opens individual chunks of one payload."""

    def __init__(self, file_key: bytes, nonce: bytes) -> None:
        if len(nonce) != NONCE_SIZE:
            raise HeaderError("file is truncated after the header (short payload nonce)")
        self._aead = ChaCha20Poly1305(hkdf_sha256(file_key, nonce, b"payload"))

    @staticmethod
    def _nonce(index: int, last: bool) -> bytes:
        return index.to_bytes(11, "big") + (_LAST if last else _NOT_LAST)

    def seal(self, index: int, plaintext: bytes | memoryview, last: bool) -> bytes:
        return self._aead.encrypt(self._nonce(index, last), plaintext, None)

    def open(self, index: int, ciphertext: bytes | memoryview, last: bool) -> bytes:
        if last and len(ciphertext) == TAG_SIZE and index > 0:
            raise PayloadError("payload ends with an empty chunk after a full one")
        try:
            return self._aead.decrypt(self._nonce(index, last), ciphertext, None)
        except InvalidTag:
            raise PayloadError(f"payload chunk {index} failed authentication") from None


class PayloadWriter:
    """Encrypts pushed plaintext into `sink`; `close()` seals the final chunk.

    A chunk that ends exactly at the end of the data written so far is held back, because only
    `close()` knows whether it is the last one (its nonce differs).
    """

    def __init__(self, sink: Callable[[bytes], object], file_key: bytes) -> None:
        nonce = os.urandom(NONCE_SIZE)
        self._cipher = ChunkCipher(file_key, nonce)
        self._sink = sink
        self._pending = bytearray()
        self._index = 0
        self.plaintext_written = 0
        self.closed = False
        sink(nonce)

    def write(self, data: bytes | bytearray | memoryview) -> int:
        if self.closed:
            raise ValueError("write to a closed payload")
        size = len(data)
        self.plaintext_written += size
        view = memoryview(data)
        sealed = []
        if self._pending:
            take = min(CHUNK_SIZE - len(self._pending), size)
            self._pending += view[:take]
            view = view[take:]
            if len(self._pending) == CHUNK_SIZE and view:
                sealed.append(self._seal(self._pending, last=False))
                self._pending = bytearray()
        # Whole chunks straight from the caller's buffer, keeping the tail (1..64 KiB) pending.
        while len(view) > CHUNK_SIZE:
            sealed.append(self._seal(view[:CHUNK_SIZE], last=False))
            view = view[CHUNK_SIZE:]
        if view:
            self._pending += view
        if sealed:
            self._sink(b"".join(sealed))
        return size

    def close(self) -> None:
        if not self.closed:
            self._sink(self._seal(self._pending, last=True))
            self._pending = bytearray()
            self.closed = True

    def _seal(self, chunk: bytes | bytearray | memoryview, last: bool) -> bytes:
        sealed = self._cipher.seal(self._index, chunk, last)
        self._index += 1
        return sealed


class PayloadReader:
    """Random access to the plaintext of a payload stored at `offset` in a file descriptor.

    The plaintext size comes from the file size alone (I5); each read decrypts only the chunks
    it covers.
    """

    def __init__(self, fd: int, offset: int, file_key: bytes, file_size: int | None = None) -> None:
        self._fd = fd
        self._base = offset + NONCE_SIZE
        if file_size is None:
            file_size = os.fstat(fd).st_size
        self.size = plaintext_size(file_size - offset)
        self._n_chunks = chunk_count(self.size)
        self._cipher = ChunkCipher(file_key, os.pread(fd, NONCE_SIZE, offset))

    def read_chunk(self, index: int) -> bytes:
        last = index == self._n_chunks - 1
        want = self.size - index * CHUNK_SIZE + TAG_SIZE if last else CHUNK_CT_SIZE
        ciphertext = os.pread(self._fd, want, self._base + index * CHUNK_CT_SIZE)
        if len(ciphertext) != want:
            raise PayloadError("payload is truncated (file shrank while reading)")
        return self._cipher.open(index, ciphertext, last)

    def read(self, offset: int, length: int) -> bytes:
        """Up to `length` bytes at `offset`; short only at end of file."""
        end = min(offset + length, self.size)
        if offset >= end:
            return b""
        first, last = offset // CHUNK_SIZE, (end - 1) // CHUNK_SIZE
        ciphertext = os.pread(
            self._fd,
            (last - first + 1) * CHUNK_CT_SIZE,
            self._base + first * CHUNK_CT_SIZE,
        )
        view = memoryview(ciphertext)
        parts = []
        for i, index in enumerate(range(first, last + 1)):
            is_last = index == self._n_chunks - 1
            part = view[i * CHUNK_CT_SIZE : (i + 1) * CHUNK_CT_SIZE]
            expected = self.size - index * CHUNK_SIZE + TAG_SIZE if is_last else CHUNK_CT_SIZE
            if len(part) != expected:
                raise PayloadError("payload is truncated (file shrank while reading)")
            parts.append(self._cipher.open(index, part, is_last))
        data = b"".join(parts)
        skip = offset - first * CHUNK_SIZE
        return data[skip : skip + end - offset]


def decrypt_payload_stream(
    read: Callable[[int], bytes], sink: Callable[[bytes], object], file_key: bytes
) -> None:
    """Decrypt a payload that can only be read forward (a pipe), in constant memory.

    A chunk is known not to be the last only once a byte after it has been seen, so one extra
    chunk is always buffered.
    """
    nonce = _read_exact(read, NONCE_SIZE)
    cipher = ChunkCipher(file_key, nonce)
    batch = 16 * CHUNK_CT_SIZE
    buf = bytearray()
    index = 0
    eof = False
    while True:
        while not eof and len(buf) <= batch:
            data = read(batch)
            eof = not data
            buf += data
        if eof:
            break
        n_sure = (len(buf) - 1) // CHUNK_CT_SIZE
        view = memoryview(buf)
        out = []
        for i in range(n_sure):
            out.append(cipher.open(index, view[i * CHUNK_CT_SIZE : (i + 1) * CHUNK_CT_SIZE], False))
            index += 1
        view.release()
        del buf[: n_sure * CHUNK_CT_SIZE]
        sink(b"".join(out))
    view = memoryview(buf)
    while len(view) > CHUNK_CT_SIZE:
        sink(cipher.open(index, view[:CHUNK_CT_SIZE], False))
        view = view[CHUNK_CT_SIZE:]
        index += 1
    if len(view) < TAG_SIZE:
        raise PayloadError("payload is truncated")
    sink(cipher.open(index, view, True))


def _read_exact(read: Callable[[int], bytes], size: int) -> bytes:
    data = b""
    while len(data) < size:
        more = read(size - len(data))
        if not more:
            break
        data += more
    return data
