"""Sizes no version could hold are refused at once (age has no holes: a sparse size is stored
as that many encrypted zeros): EFBIG past the largest file the store's filesystem can hold
(ext4 with 4 KiB blocks: 16 TiB), ENOSPC for a size it could hold but has no room for. The
size and the data stay as they were, the daemon serves on.

The stores live on small filesystems of their own: an ext4 loop disk and a tmpfs (whose
largest file is off_t's limit, so only ENOSPC answers there below 2**63).
"""

import errno
import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from .helpers import Daemon, cagefs, opened

DATA = b"intact\n" * 100
DISK_MIB = 32
TIB = 1 << 40


@pytest.fixture(params=["ext4", "tmpfs"])
def store(request: pytest.FixtureRequest, tmp_path: Path, identity: Path) -> Iterator[Path]:
    disk = tmp_path / "disk"
    disk.mkdir()
    if request.param == "ext4":
        image = tmp_path / "disk.img"
        subprocess.run(["truncate", "-s", f"{DISK_MIB}M", image], check=True)
        subprocess.run(["mkfs.ext4", "-q", "-F", "-b", "4096", image], check=True)
        subprocess.run(["mount", "-o", "loop", image, disk], check=True)
    else:
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={DISK_MIB}M", "cagefs-sz", disk])
    try:
        store = disk / "store"
        proc = cagefs("init", store, "--identity", identity)
        assert proc.returncode == 0, proc.stderr
        yield store
    finally:
        subprocess.run(["umount", disk], check=True)  # mount -o loop frees its loop device


def refused(call: Callable[..., object], *args: object) -> int:
    with pytest.raises(OSError) as failed:
        call(*args)
    return failed.value.errno or 0


def test_huge_sizes_and_offsets_are_refused_at_once(store: Path, daemons) -> None:
    ext4 = subprocess.run(
        ["findmnt", "-no", "FSTYPE", "-T", store], capture_output=True, text=True, check=True
    ).stdout.strip() == "ext4"
    mounted: Daemon = daemons("auto")
    mounted.start()
    f = mounted.mnt / "f"
    f.write_bytes(DATA)
    too_big = errno.EFBIG if ext4 else errno.ENOSPC  # 1 PiB: more than ext4's 16 TiB
    cmd = subprocess.run(["truncate", "-s", "1P", f], capture_output=True, check=False)
    message = b"File too large" if ext4 else b"No space left"
    assert cmd.returncode != 0 and message in cmd.stderr, cmd.stderr
    with opened(f, os.O_RDWR) as fd:
        assert refused(os.ftruncate, fd, 999_999_999_999_999) == too_big  # pjdfstest's size
        assert refused(os.pwrite, fd, b"x", 1 << 50) == too_big
        assert refused(os.pwrite, fd, b"x", 2**63 - 2) == errno.EFBIG
        assert refused(os.ftruncate, fd, TIB) == errno.ENOSPC  # would fit ext4, not this disk
        assert refused(os.pwrite, fd, b"x", TIB) == errno.ENOSPC
        assert os.fstat(fd).st_size == len(DATA)
        os.pwrite(fd, b"!", len(DATA))  # an ordinary write still works
    assert f.read_bytes() == DATA + b"!"
    assert "internal error" not in mounted.log_text()
    mounted.assert_store_matches()
