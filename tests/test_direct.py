"""O_DIRECT on backing files, on ext4 (direct) and tmpfs alike. DirectAppender: ciphertext
lands byte for byte where it should, from any starting offset and in writes of any size.
ReadAhead: a reader served from blocks read ahead gets exactly the plaintext, and a file
changed behind its back fails the way an ordinary read would."""

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from cagefs.age import PayloadError, PayloadReader, PayloadWriter
from cagefs.store.direct import (
    ALIGN,
    CAPACITY,
    FLUSH,
    READ_BLOCK_MAX,
    DirectAppender,
    ReadAhead,
    new_buffers,
)

FILE_KEY = bytes(range(16))

PREFIX_SIZES = [0, 1, ALIGN - 1, ALIGN, ALIGN + 1, 12345]
PIECES = [1, 100, ALIGN, ALIGN + 3, 65552, 32 * 65552, FLUSH + 1]


@pytest.fixture(params=["disk", "tmpfs"])
def directory(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Path]:
    if request.param == "disk":
        yield tmp_path
        return
    path = tmp_path / "tmpfs"
    path.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=True)


def append(path: Path, prefix: bytes, data: bytes, pieces: list[int], lend: str = "never") -> None:
    """Write `prefix` the ordinary way, then `data` through an appender, cut into `pieces`;
    `lend`: whether each piece is passed in (never), put into a buffer the appender lent
    (always), or every other piece each way (mixed), as a PayloadWriter or a caller would."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    os.write(fd, prefix)
    appender = DirectAppender(fd, len(prefix), new_buffers())
    try:
        at, i = 0, 0
        while at < len(data):
            piece = data[at : at + pieces[i % len(pieces)]]
            if lend == "always" or (lend == "mixed" and i % 2):
                lent = appender.lend(len(piece))
                lent[:] = piece
                appender(lent)
            else:
                appender(piece)
            at, i = at + len(piece), i + 1
        appender.close()
    finally:
        appender.abandon()  # as the sealer does: after an error, close the O_DIRECT descriptor
        os.close(fd)


@pytest.mark.parametrize("lend", ["never", "always", "mixed"])
@pytest.mark.parametrize("prefix_size", PREFIX_SIZES)
def test_appended_bytes_land_in_order(directory: Path, prefix_size: int, lend: str) -> None:
    prefix, data = os.urandom(prefix_size), os.urandom(3 * FLUSH + 7777)
    path = directory / "out"
    append(path, prefix, data, PIECES, lend)
    assert path.read_bytes() == prefix + data


@pytest.mark.parametrize("lend", ["never", "always"])
@pytest.mark.parametrize(
    "size", [0, 1, ALIGN - 1, ALIGN, FLUSH - 1, FLUSH, FLUSH + 1, CAPACITY + 1]
)
def test_sizes_around_the_boundaries(tmp_path: Path, size: int, lend: str) -> None:
    prefix, data = os.urandom(333), os.urandom(size)
    append(tmp_path / "out", prefix, data, [size or 1], lend)
    assert (tmp_path / "out").read_bytes() == prefix + data


def test_the_disk_is_written_directly(tmp_path: Path) -> None:
    """On this machine's ext4 the direct path is the one taken (else the test above proves
    only the fallback)."""
    fd = os.open(tmp_path / "out", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        buffers = new_buffers()
        appender = DirectAppender(fd, 0, buffers)
        assert appender._direct is not None
        lent = appender.lend(FLUSH)
        assert lent.obj is buffers[0].obj  # sealed output goes straight into the aligned buffer
        lent[:] = os.urandom(FLUSH)
        appender(lent)
        appender(os.urandom(FLUSH))
        appender.close()
        assert not appender._refused
    finally:
        os.close(fd)


def test_a_full_disk_raises_enospc(tmp_path: Path) -> None:
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(small)], check=True)
    try:
        with pytest.raises(OSError) as caught:
            append(small / "out", b"h" * 100, os.urandom(4 * FLUSH), [FLUSH // 2])
        assert caught.value.errno == 28
    finally:
        subprocess.run(["umount", str(small)], check=True)


def age_payload(path: Path, prefix: bytes, plaintext: bytes) -> None:
    """`prefix` (a stand-in header), then `plaintext` as a payload under FILE_KEY."""
    with path.open("wb") as file:
        file.write(prefix)
        writer = PayloadWriter(file.write, FILE_KEY)
        writer.write(plaintext)
        writer.close()


def read_sequentially(reader: PayloadReader, ahead: ReadAhead, block: int, depth: int) -> bytes:
    """Read the whole payload in `block`-sized reads the way content.py does: each read served
    through `ahead`, then the next `depth` blocks scheduled."""
    out = bytearray()
    for offset in range(0, reader.size, block):
        buffer = bytearray(min(block, reader.size - offset))
        reader.readinto(offset, buffer, ahead.pread)
        ahead.schedule(
            [reader.ciphertext_span(offset + block * k, block) for k in range(1, depth + 1)]
        )
        out += buffer
    return bytes(out)


@pytest.mark.parametrize("prefix_size", [0, 1, 137, ALIGN])
@pytest.mark.parametrize("block", [128 * 1024, 1024 * 1024, 1024 * 1024 + 4096])
def test_read_ahead_gives_the_plaintext(directory: Path, prefix_size: int, block: int) -> None:
    plaintext = os.urandom(5 * 1024 * 1024 + 12345)
    path = directory / "payload"
    age_payload(path, b"h" * prefix_size, plaintext)
    fd = os.open(path, os.O_RDONLY)
    ahead = ReadAhead(fd)
    try:
        reader = PayloadReader(fd, prefix_size, FILE_KEY)
        assert read_sequentially(reader, ahead, block, depth=4) == plaintext
        assert len(ahead._ahead) + len(ahead._spare) <= 5  # buffers stay bounded
    finally:
        ahead.close()
        os.close(fd)


def test_read_ahead_reads_the_disk_directly(tmp_path: Path) -> None:
    """On this machine's ext4 the blocks come from O_DIRECT reads into aligned buffers (else
    the test above proves only the fallback)."""
    path = tmp_path / "payload"
    age_payload(path, b"header", os.urandom(3 * 1024 * 1024))
    fd = os.open(path, os.O_RDONLY)
    ahead = ReadAhead(fd)
    try:
        reader = PayloadReader(fd, len(b"header"), FILE_KEY)
        start, stop = reader.ciphertext_span(1024 * 1024, 1024 * 1024)
        ahead.schedule([(start, stop)])
        view = ahead.pread(stop - start, start)
        assert isinstance(view, memoryview) and view.nbytes == stop - start
        assert view == os.pread(fd, stop - start, start)
        assert stop - start <= READ_BLOCK_MAX
    finally:
        ahead.close()
        os.close(fd)


def test_a_file_cut_behind_a_read_ahead_fails_like_an_ordinary_read(directory: Path) -> None:
    plaintext = os.urandom(4 * 1024 * 1024)
    path = directory / "payload"
    age_payload(path, b"", plaintext)
    fd = os.open(path, os.O_RDWR)
    ahead = ReadAhead(fd)
    try:
        reader = PayloadReader(fd, 0, FILE_KEY)
        block = 1024 * 1024
        spans = [reader.ciphertext_span(block * k, block) for k in (1, 2, 3)]
        os.truncate(path, spans[1][0] + 100)  # after the reader sized the file: behind its back
        ahead.schedule(spans)  # the second block's read comes short
        out = bytearray(block)
        reader.readinto(block, out, ahead.pread)
        assert out == plaintext[block : 2 * block]
        with pytest.raises(PayloadError, match="truncated"):
            reader.readinto(2 * block, out, ahead.pread)
    finally:
        ahead.close()
        os.close(fd)
