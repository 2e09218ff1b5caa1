"""store/paths: backing entries reached through directory descriptors never follow a symlink,
and paths longer than PATH_MAX work as long as each component fits."""

import errno
import os
import stat
from pathlib import Path

import pytest

from cagefs.store.paths import StoreDirs, chmod_at, open_file, rename_into


def test_a_walk_never_follows_a_symlinked_directory(tmp_path: Path) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (root / "real").mkdir()
    (root / "link").symlink_to(outside)
    dirs = StoreDirs(root)
    try:
        with dirs.at("real") as fd:
            assert os.path.samestat(os.fstat(fd), os.stat(root / "real"))
        with pytest.raises(OSError) as exc:
            dirs.open("link")
        assert exc.value.errno in (errno.ENOTDIR, errno.ELOOP)
    finally:
        dirs.close()


def test_paths_longer_than_path_max(tmp_path: Path) -> None:
    dirs = StoreDirs(tmp_path)
    try:
        path = "/".join(["d" * 250] * 20)  # 5,019 bytes
        head = ""
        for name in path.split("/"):
            with dirs.at(head) as fd:
                os.mkdir(name, dir_fd=fd)
            head = f"{head}/{name}" if head else name
        with dirs.at(path) as fd:
            os.close(os.open("f.age", os.O_WRONLY | os.O_CREAT, 0o600, dir_fd=fd))
            os.close(open_file(fd, "f.age"))
    finally:
        dirs.close()


def test_chmod_and_open_never_follow_a_symlink(tmp_path: Path) -> None:
    target = tmp_path / "target"
    target.write_bytes(b"t")
    target.chmod(0o644)
    (tmp_path / "link").symlink_to(target)
    fd = os.open(tmp_path, os.O_PATH | os.O_DIRECTORY)
    try:
        chmod_at(fd, "link", 0o600)
        assert stat.S_IMODE(target.stat().st_mode) == 0o644
        with pytest.raises(OSError) as exc:
            open_file(fd, "link")
        assert exc.value.errno == errno.ELOOP
        os.mkfifo(tmp_path / "fifo")
        os.close(open_file(fd, "fifo"))  # does not wait for a writer
    finally:
        os.close(fd)


def test_rename_into_keeps_the_directorys_mtime(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "new").write_bytes(b"n")
    os.utime(tmp_path / "d", ns=(1, 2_000_000_003))
    fd = os.open(tmp_path / "d", os.O_PATH | os.O_DIRECTORY)
    try:
        before, after = rename_into(str(tmp_path / "new"), fd, "x.age")
    finally:
        os.close(fd)
    assert (tmp_path / "d" / "x.age").read_bytes() == b"n"
    assert before.st_mtime_ns == after.st_mtime_ns == 2_000_000_003
