"""Sizes no version could hold are refused at once (age has no holes: a sparse size is stored
as that many encrypted zeros): ENOSPC when the store's filesystem lacks the room, EFBIG past
the largest file there can be. The size and the data stay as they were, the daemon serves on.
"""

import errno
import os
import subprocess

import pytest

from .helpers import Daemon, opened

DATA = b"intact\n" * 100


def refused(call: object, *args: object) -> int:
    with pytest.raises(OSError) as failed:
        call(*args)  # type: ignore[operator]
    return failed.value.errno or 0


def test_huge_sizes_and_offsets_are_refused_at_once(mounted: Daemon) -> None:
    f = mounted.mnt / "f"
    f.write_bytes(DATA)
    cmd = subprocess.run(["truncate", "-s", "1P", f], capture_output=True, check=False)
    assert cmd.returncode != 0 and b"No space left" in cmd.stderr, cmd.stderr
    with opened(f, os.O_RDWR) as fd:
        assert refused(os.ftruncate, fd, 1 << 50) == errno.ENOSPC
        assert refused(os.pwrite, fd, b"x", 2**63 - 2) == errno.EFBIG
        assert refused(os.pwrite, fd, b"x", 1 << 50) == errno.ENOSPC
        assert os.fstat(fd).st_size == len(DATA)
        os.pwrite(fd, b"!", len(DATA))  # an ordinary write still works
    assert f.read_bytes() == DATA + b"!"
    assert "internal error" not in mounted.log_text()
    mounted.assert_store_matches()
