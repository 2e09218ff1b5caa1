"""store/reclaim: a file whose last name goes is kept alive by the hold, and freed only by the
background close, so that the freeing never happens inside the rename."""

import fcntl
import os
from pathlib import Path

from cagefs.store import reclaim


def write(path: Path, size: int) -> None:
    path.write_bytes(os.urandom(size))


def open_fds() -> set[int]:
    return {int(name) for name in os.listdir("/proc/self/fd")}


def is_open(fd: int) -> bool:
    try:
        fcntl.fcntl(fd, fcntl.F_GETFD)
    except OSError:
        return False
    return True


def test_a_held_file_outlives_its_name_until_the_hold_is_closed(tmp_path: Path) -> None:
    path = tmp_path / "old"
    write(path, 1 << 20)
    inode = path.stat().st_ino
    held = reclaim.hold(str(path))
    assert held is not None
    path.unlink()
    assert os.fstat(held).st_ino == inode
    assert os.fstat(held).st_nlink == 0  # nameless, yet its blocks are still allocated
    assert os.fstat(held).st_blocks > 0
    reclaim.close_later(held)
    reclaim.wait()
    assert not is_open(held)


def test_a_rename_over_a_held_file_leaks_nothing(tmp_path: Path) -> None:
    """What the publisher does: hold the target, rename over it, let go in the background."""
    old, new = tmp_path / "name", tmp_path / "new-version"
    write(old, 4096)
    new.write_bytes(b"new")
    before = open_fds()
    held = reclaim.hold(str(old))
    os.rename(new, old)
    reclaim.close_later(held)
    assert old.read_bytes() == b"new" and not new.exists()
    reclaim.wait()
    assert open_fds() == before


def test_nothing_to_hold_is_not_an_error(tmp_path: Path) -> None:
    """A first publish replaces nothing; a symlink is held as itself, not followed."""
    assert reclaim.hold(str(tmp_path / "missing")) is None
    reclaim.close_later(None)
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "missing")
    held = reclaim.hold(str(link))
    assert held is not None
    reclaim.close_later(held)
    reclaim.wait()
    assert not is_open(held)
