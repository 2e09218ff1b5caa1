"""O_DIRECT writes and buffered reads of the same file through other handles (I8): a read
after a direct write returns the new bytes, not pages the kernel cached before it."""

import mmap
import os
import subprocess

from .helpers import Daemon, opened

PAGE = 4096


def aligned(data: bytes) -> mmap.mmap:
    """O_DIRECT needs page-aligned buffers: an anonymous mapping is one."""
    buffer = mmap.mmap(-1, len(data))
    buffer.write(data)
    return buffer


def test_a_direct_write_is_seen_by_buffered_readers(mounted: Daemon) -> None:
    f = mounted.mnt / "f"
    old = b"o" * (16 * PAGE)
    f.write_bytes(old)
    with opened(f, os.O_RDONLY) as reader:
        assert os.pread(reader, len(old), 0) == old  # cached by the kernel now
        for flags in (os.O_WRONLY, os.O_RDWR):
            with opened(f, flags | os.O_DIRECT) as direct:
                new = bytes([flags + 65]) * (2 * PAGE)
                assert os.pwritev(direct, [aligned(new)], PAGE) == len(new)
                got = os.pread(reader, len(new), PAGE)
                assert got == new, f"buffered read after O_DIRECT write: {got[:8]!r}"
            assert os.pread(reader, len(old), 0)[PAGE : 3 * PAGE] == new
    mounted.assert_store_matches()


def test_an_aio_direct_write_is_seen_by_buffered_readers(mounted: Daemon) -> None:
    """The same with asynchronous I/O (fio, libaio, iodepth 4), as fsx -Z -A does."""
    f = mounted.mnt / "f"
    old = b"o" * (64 * PAGE)
    f.write_bytes(old)
    with opened(f, os.O_RDONLY) as reader:
        assert os.pread(reader, len(old), 0) == old  # cached by the kernel now
        fio = subprocess.run(
            ["fio", "--name=w", f"--filename={f}", "--ioengine=libaio", "--direct=1",
             "--rw=write", "--bs=16k", "--iodepth=4", f"--size={len(old)}",
             "--buffer_pattern=0x58585858", "--end_fsync=0", "--allow_file_create=0"],
            capture_output=True, check=False,
        )
        assert fio.returncode == 0, fio.stderr.decode()[-1000:]
        got = os.pread(reader, len(old), 0)
        assert got == b"X" * len(old), f"{got.count(b'o')} bytes of the old version read back"
    mounted.assert_store_matches()
