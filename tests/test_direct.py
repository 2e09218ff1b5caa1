"""DirectAppender: ciphertext appended with O_DIRECT lands byte for byte where it should, from
any starting offset and in writes of any size, on ext4 (direct) and tmpfs alike."""

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from cagefs.store.direct import ALIGN, CAPACITY, FLUSH, DirectAppender, new_buffers

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
