"""I8 across the page cache: a file written through a direct-I/O handle (a fresh write-only
open, see cagefs/fs/directio.py) looks the same through every cached handle and mapping,
including pages those handles cached before the write. The kernel keeps a file's pages when
its mtime changes (cagefs declines FUSE's auto_inval_data), so a rewrite that leaves the size
as it was must be seen too: nothing but the daemon or the kernel's own write path drops them."""

import ctypes
import mmap
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from .helpers import Daemon, opened, read_all

FRESH_WRITE = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
PAGE = mmap.PAGESIZE


def test_a_reader_sees_every_write_to_a_file_it_watches_grow(mounted: Daemon) -> None:
    path = mounted.mnt / "growing.log"
    expected = b""
    with opened(path, FRESH_WRITE) as writer:
        for step in range(6):
            piece = bytes([65 + step]) * (100 + step * 3000)
            os.write(writer, piece)
            expected += piece
            # A new reader each time, plus one kept open: both have cached the partial last
            # page the previous step left, and must not serve it after this write.
            with opened(path, os.O_RDONLY) as reader:
                assert read_all(reader) == expected
            if step == 0:
                watcher = os.open(path, os.O_RDONLY)
            assert read_all(watcher) == expected
            assert os.fstat(watcher).st_size == len(expected)
    os.close(watcher)
    assert path.read_bytes() == expected
    mounted.assert_store_matches()


def test_a_shared_mapping_sees_writes_made_after_it_was_mapped(mounted: Daemon) -> None:
    """No system call runs between the write and the check, so only the daemon dropping
    the cached pages (not the kernel noticing a new mtime) can make the mapping current."""
    path = mounted.mnt / "mapped.bin"
    page = mmap.PAGESIZE
    grown = b"x" * 100 + b"y" * (2 * page - 100)
    with opened(path, FRESH_WRITE) as writer:
        os.write(writer, grown[: page + 100])
        with opened(path, os.O_RDWR) as reader:
            view = mmap.mmap(reader, page + 100, mmap.MAP_SHARED)
            anchor = ctypes.c_char.from_buffer(view)
            # The whole second page is mapped: past the end of the file it reads zeros.
            assert ctypes.string_at(ctypes.addressof(anchor), 2 * page) == grown[
                : page + 100
            ] + bytes(page - 100)
            os.write(writer, grown[page + 100 :])
            assert ctypes.string_at(ctypes.addressof(anchor), 2 * page) == grown
            del anchor
            view.close()
    mounted.assert_store_matches()


def test_truncating_a_file_others_have_cached_replaces_what_they_see(mounted: Daemon) -> None:
    path = mounted.mnt / "doc.txt"
    old = os.urandom(300_000)
    path.write_bytes(old)
    with opened(path, os.O_RDONLY) as reader:
        assert read_all(reader) == old  # now in the page cache
        with opened(path, os.O_WRONLY | os.O_TRUNC) as writer:
            assert read_all(reader) == b""
            os.write(writer, b"new content\n")
            assert read_all(reader) == b"new content\n"
        assert os.fstat(reader).st_size == len(b"new content\n")
    assert path.read_bytes() == b"new content\n"
    mounted.assert_store_matches()


def test_a_file_written_directly_reads_back_through_the_cache(mounted: Daemon) -> None:
    """What cp, dd and a shell's `>` write (fresh, write-only) is exactly what cat reads,
    before and after the daemon restarts."""
    data = os.urandom(5 * 1024 * 1024 + 12345)
    path = mounted.mnt / "copy.bin"
    with opened(path, FRESH_WRITE) as writer:
        for offset in range(0, len(data), 1 << 20):
            os.write(writer, data[offset : offset + (1 << 20)])
    assert path.read_bytes() == data
    mounted.remount()
    assert path.read_bytes() == data
    mounted.assert_store_matches()


def rewrite_fresh(path: Path, size: int) -> bytes:
    """cp, dd, a shell's `>`: a direct-I/O handle."""
    with opened(path, os.O_WRONLY | os.O_TRUNC) as fd:
        os.write(fd, b"F" * size)
    return b"F" * size


def rewrite_with_a_hole(path: Path, size: int) -> bytes:
    """Truncated through a cached handle, then written at both ends: zeros between."""
    with opened(path, os.O_RDWR | os.O_TRUNC) as fd:
        os.pwrite(fd, b"H" * 100, 0)
        os.pwrite(fd, b"T" * 100, size - 100)
    return b"H" * 100 + bytes(size - 200) + b"T" * 100


def rewrite_in_place(path: Path, size: int) -> bytes:
    """One page in the middle, through a cached handle (what a database does)."""
    with opened(path, os.O_RDWR) as fd:
        os.pwrite(fd, b"P" * PAGE, 2 * PAGE)
    return b"A" * 2 * PAGE + b"P" * PAGE + b"A" * (size - 3 * PAGE)


def rewrite_through_another_name(path: Path, size: int) -> bytes:
    """The same page through a hard link looked up after a remount."""
    with opened(path.with_name("other-name"), os.O_RDWR) as fd:
        os.pwrite(fd, b"L" * PAGE, 2 * PAGE)
    return b"A" * 2 * PAGE + b"L" * PAGE + b"A" * (size - 3 * PAGE)


@pytest.mark.parametrize(
    "rewrite",
    [rewrite_fresh, rewrite_with_a_hole, rewrite_in_place, rewrite_through_another_name],
    ids=["fresh", "hole", "in-place", "link"],
)
def test_a_rewrite_of_the_same_size_replaces_what_readers_cached(
    daemons: Callable[..., Daemon], rewrite: Callable[[Path, int], bytes]
) -> None:
    """The strategies stage writes differently, the page cache is the same for all: `auto`."""
    mounted = daemons("auto")
    mounted.start()
    path = mounted.mnt / "same-size.bin"
    old = b"A" * (20 * PAGE)
    path.write_bytes(old)
    os.link(path, path.with_name("other-name"))
    mounted.remount()  # both names looked up anew: one inode all the same
    with opened(path, os.O_RDONLY) as reader:
        assert read_all(reader) == old  # now in the page cache
        new = rewrite(path, len(old))
        assert os.fstat(reader).st_size == len(old)  # (the kernel takes in the new mtime)
        assert read_all(reader) == new
    assert path.read_bytes() == new
    mounted.assert_store_matches()
