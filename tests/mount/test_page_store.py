"""A small read hands the rest of its decrypted chunk to the kernel's page cache
(cagefs/fs/pagestore.py): the pages appear there, and they never hide a write or a truncate
made after them, nor hang readers and writers working on the same file at once."""

import mmap
import os
import random
import subprocess
import threading
import time
from pathlib import Path

from .helpers import Daemon, opened, read_all

CHUNK = 64 * 1024
PAGE = 4096


def cached_bytes(path: Path) -> int:
    """Bytes of `path` in the page cache, by util-linux fincore (mincore on a mapping)."""
    out = subprocess.run(
        ["fincore", "--bytes", "--noheadings", "--output", "RES", str(path)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return int(out.split()[0])


def wait_cached(path: Path, want: int, timeout: float = 10.0) -> int:
    """The page cache's share of `path` once it reaches `want` (stores run on a thread)."""
    deadline = time.monotonic() + timeout
    while (got := cached_bytes(path)) < want and time.monotonic() < deadline:
        time.sleep(0.02)
    return got


def uncached_reader(path: Path) -> int:
    """A read-only descriptor of `path` with none of its pages cached and no readahead."""
    fd = os.open(path, os.O_RDONLY)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
    return fd


def saved_file(path: Path, size: int, seed: int = 16) -> bytes:
    data = random.Random(seed).randbytes(size)
    path.write_bytes(data)
    return data


def test_a_small_read_caches_the_rest_of_its_chunk(mounted: Daemon) -> None:
    path = mounted.mnt / "random.bin"
    data = saved_file(path, 4 * CHUNK + 1000)
    fd = uncached_reader(path)
    try:
        assert cached_bytes(path) == 0
        assert os.pread(fd, PAGE, CHUNK + 2 * PAGE) == data[CHUNK + 2 * PAGE : CHUNK + 3 * PAGE]
        assert wait_cached(path, CHUNK) == CHUNK  # that chunk, and only it
        # The short last chunk: the pages up to the end of the file, none past it.
        end = len(data)
        assert os.pread(fd, PAGE, 4 * CHUNK) == data[4 * CHUNK : 4 * CHUNK + PAGE]
        assert wait_cached(path, CHUNK + PAGE) == CHUNK + PAGE
        assert os.fstat(fd).st_size == end
        assert read_all(fd) == data
    finally:
        os.close(fd)
    mounted.assert_store_matches()


def test_a_chunk_still_in_the_daemons_cache_is_stored_again(mounted: Daemon) -> None:
    """The kernel dropped the pages (fio does, before each job) but the daemon still has the
    decrypted chunk: one read gives the kernel the whole chunk again."""
    path = mounted.mnt / "again.bin"
    data = saved_file(path, 2 * CHUNK)
    fd = uncached_reader(path)
    try:
        os.pread(fd, PAGE, 0)
        assert wait_cached(path, CHUNK) == CHUNK
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        assert cached_bytes(path) == 0
        assert os.pread(fd, PAGE, 3 * PAGE) == data[3 * PAGE : 4 * PAGE]
        assert wait_cached(path, CHUNK) == CHUNK
    finally:
        os.close(fd)


def test_an_o_direct_reader_stores_no_page(mounted: Daemon) -> None:
    path = mounted.mnt / "direct.bin"
    data = saved_file(path, 2 * CHUNK)
    fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        buffer = mmap.mmap(-1, PAGE)  # O_DIRECT wants an aligned buffer
        assert os.preadv(fd, [buffer], CHUNK) == PAGE
        assert bytes(buffer) == data[CHUNK : CHUNK + PAGE]
        time.sleep(0.3)  # what a store would take
        assert cached_bytes(path) == 0
    finally:
        os.close(fd)


def test_stored_pages_never_hide_a_later_write_or_truncate(mounted: Daemon) -> None:
    path = mounted.mnt / "changed.bin"
    data = bytearray(saved_file(path, 3 * CHUNK))
    reader = uncached_reader(path)
    try:
        os.pread(reader, PAGE, 0)
        wait_cached(path, CHUNK)
        with opened(path, os.O_RDWR) as writer:  # a cached handle: writes go through pages
            os.pwrite(writer, b"w" * 100, 5 * PAGE + 7)
        data[5 * PAGE + 7 : 5 * PAGE + 107] = b"w" * 100
        assert os.pread(reader, PAGE, 5 * PAGE) == data[5 * PAGE : 6 * PAGE]
        os.pread(reader, PAGE, 2 * CHUNK)  # stores the rest of the last chunk
        os.truncate(path, 2 * CHUNK + 10)
        del data[2 * CHUNK + 10 :]
        assert os.fstat(reader).st_size == len(data)
        time.sleep(0.2)  # a store that came too late would show now: a size grown back
        assert os.fstat(reader).st_size == len(data)
        assert read_all(reader) == data
    finally:
        os.close(reader)
    assert path.read_bytes() == data
    mounted.assert_store_matches()


def test_readers_and_writers_of_one_file_at_once_finish_and_agree(mounted: Daemon) -> None:
    """Stores wait for pages the kernel has locked for reads and writes in flight: with
    readers at random pages and a writer rewriting pages of the same chunks, nothing hangs,
    and every read returns the file's data."""
    path = mounted.mnt / "busy.bin"
    data = saved_file(path, 8 * CHUNK)
    stop = time.monotonic() + 3
    errors: list[str] = []

    def read_randomly(seed: int) -> None:
        rng = random.Random(seed)
        fd = uncached_reader(path)
        try:
            while time.monotonic() < stop:
                at = rng.randrange(0, len(data), PAGE)
                got = os.pread(fd, PAGE, at)
                if got != data[at : at + PAGE]:
                    errors.append(f"read at {at} differs")
                    return
                if rng.random() < 0.05:
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)

    def rewrite_same() -> None:
        rng = random.Random(0)
        while time.monotonic() < stop:
            at = rng.randrange(0, len(data), PAGE)
            with opened(path, os.O_RDWR) as fd:
                os.pwrite(fd, data[at : at + PAGE], at)

    threads = [threading.Thread(target=read_randomly, args=(seed,)) for seed in range(3)]
    threads.append(threading.Thread(target=rewrite_same))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not [t for t in threads if t.is_alive()], "readers or writer hung"
    assert not errors, errors[:3]
    assert path.read_bytes() == data
    mounted.assert_store_matches()
