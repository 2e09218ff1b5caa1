"""Property tests: STREAM chunk arithmetic, and writer/reader round trips for any write sizes."""

import io
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cagefs.age.armor import ArmorWriter, armor_reader
from cagefs.age.errors import AgeError, PayloadError
from cagefs.age.stream import (
    BATCH_CHUNKS,
    CHUNK_CT_SIZE,
    CHUNK_SIZE,
    NONCE_SIZE,
    TAG_SIZE,
    PayloadReader,
    PayloadWriter,
    chunk_count,
    decrypt_payload_stream,
    payload_size,
    plaintext_size,
)

FILE_KEY = bytes(range(16))
sizes = st.integers(min_value=0, max_value=1 << 40)


@given(sizes)
def test_plaintext_size_inverts_payload_size(n: int) -> None:
    assert plaintext_size(payload_size(n)) == n


@given(sizes)
def test_payload_size_is_nonce_plus_sealed_chunks(n: int) -> None:
    assert payload_size(n) == NONCE_SIZE + n + TAG_SIZE * chunk_count(n)
    assert chunk_count(n) == max(1, -(-n // CHUNK_SIZE))


@given(st.integers(min_value=0, max_value=1 << 40))
def test_every_size_is_valid_or_rejected(payload: int) -> None:
    """A payload size is either the size of exactly one plaintext size, or refused."""
    try:
        n = plaintext_size(payload)
    except AgeError:
        sealed = payload - NONCE_SIZE
        last = sealed - (max(1, -(-sealed // CHUNK_CT_SIZE)) - 1) * CHUNK_CT_SIZE
        assert (
            payload < NONCE_SIZE + TAG_SIZE
            or last < TAG_SIZE
            or (last == TAG_SIZE and sealed > CHUNK_CT_SIZE)
        )
    else:
        assert payload_size(n) == payload


@given(st.integers(min_value=1, max_value=1 << 30), st.integers(min_value=1, max_value=TAG_SIZE))
def test_sizes_with_a_partial_tag_are_rejected(chunks: int, extra: int) -> None:
    """A last chunk shorter than a tag, or a lone empty chunk after full ones, is never valid."""
    with pytest.raises(PayloadError):
        plaintext_size(NONCE_SIZE + chunks * CHUNK_CT_SIZE + extra)


def write_in_pieces(plaintext: bytes, pieces: list[int]) -> bytes:
    """Encrypt `plaintext` pushing it in pieces of these sizes (cycled), return the payload."""
    out = bytearray()
    writer = PayloadWriter(out.extend, FILE_KEY)
    offset, i = 0, 0
    while offset < len(plaintext):
        size = pieces[i % len(pieces)]
        writer.write(plaintext[offset : offset + size])
        offset += size
        i += 1
    writer.close()
    return bytes(out)


write_sizes = st.lists(
    st.one_of(
        st.integers(0, 300),
        st.sampled_from([CHUNK_SIZE - 1, CHUNK_SIZE, CHUNK_SIZE + 1]),
        st.integers(0, 3 * CHUNK_SIZE),
    ),
    min_size=1,
    max_size=8,
).filter(any)
lengths = st.one_of(
    st.integers(0, 1000),
    st.sampled_from([k * CHUNK_SIZE + d for k in (1, 2, 3) for d in (-1, 0, 1)]),
)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(length=lengths, pieces=write_sizes, data=st.data())
def test_writer_reader_round_trip(length: int, pieces: list[int], data, tmp_path: Path) -> None:
    plaintext = os.urandom(length)
    payload = write_in_pieces(plaintext, pieces)
    assert len(payload) == payload_size(length)

    streamed = bytearray()
    decrypt_payload_stream(io.BytesIO(payload).read, streamed.extend, FILE_KEY)
    assert streamed == plaintext

    path = tmp_path / "payload"
    path.write_bytes(b"HEADER" + payload)
    fd = os.open(path, os.O_RDONLY)
    try:
        reader = PayloadReader(fd, len(b"HEADER"), FILE_KEY)
        assert reader.size == length
        offset = data.draw(st.integers(0, length + 10), label="offset")
        size = data.draw(st.integers(0, length + 10), label="size")
        assert reader.read(offset, size) == plaintext[offset : offset + size]

        start, stop = reader.ciphertext_span(offset, size)
        asked: list[tuple[int, int]] = []

        def pread(n: int, at: int) -> bytes:
            asked.append((at, at + n))
            return os.pread(fd, n, at)

        out = bytearray(max(0, min(size, length - offset)))
        assert reader.readinto(offset, out, pread) == len(out)
        assert out == plaintext[offset : offset + size]
        assert all(start <= lo and hi <= stop for lo, hi in asked)  # a read-ahead's span suffices
        assert (start < stop) == bool(asked)
    finally:
        os.close(fd)


@pytest.mark.parametrize("small", [CHUNK_SIZE, 1000, CHUNK_SIZE - 1])
@pytest.mark.parametrize("large", [CHUNK_SIZE + 1, 3 * CHUNK_SIZE, 40 * CHUNK_SIZE + 5])
def test_small_writes_filling_a_batch_then_a_large_one(small: int, large: int) -> None:
    """Small writes collect until the pending buffer holds a whole batch; a large write after
    that must start a new batch, not overflow the one being sealed (a sealer process met this
    when slots of one 64 KiB chunk each were followed by a full slot)."""
    count = -(-BATCH_CHUNKS * CHUNK_SIZE // small)
    pieces = [small] * count + [large, small, large]
    plaintext = os.urandom(sum(pieces))
    streamed = bytearray()
    payload = write_in_pieces_exactly(plaintext, pieces)
    decrypt_payload_stream(io.BytesIO(payload).read, streamed.extend, FILE_KEY)
    assert streamed == plaintext


def write_in_pieces_exactly(plaintext: bytes, pieces: list[int]) -> bytes:
    """Like `write_in_pieces`, but each size used once, in order."""
    out = bytearray()
    writer = PayloadWriter(out.extend, FILE_KEY)
    offset = 0
    for size in pieces:
        writer.write(plaintext[offset : offset + size])
        offset += size
    writer.close()
    return bytes(out)


@settings(max_examples=40, deadline=None)
@given(length=lengths, pieces=write_sizes)
def test_armor_round_trip(length: int, pieces: list[int]) -> None:
    data = os.urandom(length)
    out = bytearray()
    armor = ArmorWriter(out.extend)
    offset, i = 0, 0
    while offset < length:
        armor.write(data[offset : offset + pieces[i % len(pieces)]])
        offset += pieces[i % len(pieces)]
        i += 1
    armor.close()
    lines = bytes(out).split(b"\n")
    assert all(len(line) == 64 for line in lines[1:-3])
    assert armor_reader(io.BytesIO(bytes(out))).read() == data


@pytest.mark.parametrize("tamper", [False, True])
def test_reads_of_an_empty_payload_authenticate_its_chunk(tamper: bool, tmp_path: Path) -> None:
    """An empty payload is one sealed empty chunk: reading it, even at its end, checks that."""
    payload = bytearray(write_in_pieces(b"", [1]))
    if tamper:
        payload[-1] ^= 1
    path = tmp_path / "payload"
    path.write_bytes(payload)
    fd = os.open(path, os.O_RDONLY)
    try:
        for _ in range(2):  # checked once, and every read gives the same answer after that
            reader = PayloadReader(fd, 0, FILE_KEY)
            if tamper:
                with pytest.raises(PayloadError):
                    reader.read(0, 4096)
                with pytest.raises(PayloadError):
                    reader.readinto(0, bytearray(10))
            else:
                assert reader.read(0, 4096) == b""
                assert reader.readinto(5, bytearray(10)) == 0
    finally:
        os.close(fd)
