"""I8 across the page cache: a file written through a direct-I/O handle (a fresh write-only
open, see cagefs/fs/directio.py) looks the same through every cached handle and mapping,
including pages those handles cached before the write."""

import ctypes
import mmap
import os

from .helpers import Daemon, opened, read_all

FRESH_WRITE = os.O_WRONLY | os.O_CREAT | os.O_TRUNC


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
