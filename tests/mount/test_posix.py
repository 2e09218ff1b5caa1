"""Names and POSIX semantics: long paths, colliding backing names, special files, modes, rename
flags, readdir, inode numbers, timestamps, nlink. Where POSIX says what must happen, the same
operations run on a plain directory (`plain`) and the results are compared."""

import contextlib
import errno
import os
import shutil
import socket
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from .helpers import SUFFIX, Daemon, opened

NAME = 250  # a long component: 250 + ".age" still fits NAME_MAX


@pytest.fixture
def mount(daemons: Callable[..., Daemon]) -> Daemon:
    """One mount (the default strategy): names do not depend on how data is written."""
    daemon = daemons()
    daemon.start()
    return daemon


def expect_errno(code: int, call: Callable[[], object]) -> None:
    with pytest.raises(OSError) as exc:
        call()
    got = exc.value.errno
    assert got == code, f"expected {errno.errorcode[code]}, got {errno.errorcode.get(got, got)}"


# --- 12.11: paths resolved at directory descriptors -----------------------------------------


def deep_path(top: Path, total: int) -> tuple[Path, Path]:
    """(directory, file) under `top` whose full path is exactly `total` bytes long."""
    directory = top
    while total - len(os.fsencode(directory)) > 2 * (NAME + 1):
        directory = directory / ("d" * NAME)
    room = total - len(os.fsencode(directory)) - 2  # two separators left
    directory = directory / ("e" * (room - room // 2))
    f = directory / ("f" * (room // 2))
    assert len(os.fsencode(f)) == total
    return directory, f


def test_paths_up_to_path_max_work_though_backing_paths_are_longer(mount: Daemon) -> None:
    """A path of 4,094 bytes in the mount is a longer path in the store (the store's path is
    longer, and files get `.age`): only PATH_MAX of the mount's path may limit it."""
    directory, f = deep_path(mount.mnt, 4094)
    rel = f.relative_to(mount.mnt)
    assert len(os.fsencode(mount.store / f"{rel}{SUFFIX}")) > 4095
    os.makedirs(directory)
    f.write_bytes(b"deep content")
    os.chmod(f, 0o600)
    assert f.read_bytes() == b"deep content"
    assert stat.S_IMODE(os.stat(f).st_mode) == 0o600
    assert os.listdir(directory) == [f.name]
    moved = f.with_name("g" * len(f.name))
    os.rename(f, moved)
    os.symlink("target", f)
    assert os.readlink(f) == "target"
    mount.remount()
    assert moved.read_bytes() == b"deep content"
    shutil.rmtree(mount.mnt / rel.parts[0])  # the store check walks the store by path
    mount.assert_store_matches()


def test_a_symlink_swapped_into_the_store_is_not_followed(mount: Daemon, tmp_path: Path) -> None:
    """Someone with access to the store replaces directory `d` by a symlink to a directory
    outside it: nothing the mount writes below `d` may land outside the store."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (mount.mnt / "d").mkdir()
    with open(mount.mnt / "d" / "f", "wb") as f:
        f.write(b"inside")
        f.flush()
        os.fsync(f.fileno())  # published: nothing of it waits to be written into `d`
    dir_fd = os.open(mount.mnt / "d", os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.rename(mount.store / "d", tmp_path / "d-moved")
        os.symlink(outside, mount.store / "d")
        # (A new file reaches the store only at its publish: the publisher's business.)
        for create in (
            lambda: os.mkdir("sub", dir_fd=dir_fd),
            lambda: os.symlink("t", "link", dir_fd=dir_fd),
        ):
            with contextlib.suppress(OSError):  # refusing is fine; following the symlink is not
                create()
    finally:
        os.close(dir_fd)
    mount.stop_clean()
    assert os.listdir(outside) == []


# --- 12.3: backing names that collide --------------------------------------------------------


def test_names_whose_backing_names_collide_are_refused(mount: Daemon) -> None:
    """File `x` is stored as `x.age`: a directory, symlink or rename named `x.age` in the same
    directory (or the reverse) is refused with EEXIST, and nothing is lost or stops."""
    m = mount.mnt
    (m / "x").write_bytes(b"file x")  # published or not, `x.age` is taken
    expect_errno(errno.EEXIST, lambda: (m / "x.age").mkdir())
    expect_errno(errno.EEXIST, lambda: os.symlink("t", m / "x.age"))
    (m / "d.age").mkdir()
    expect_errno(errno.EEXIST, lambda: (m / "d").write_bytes(b"would destroy dir d.age"))
    os.symlink("t", m / "s.age")
    expect_errno(errno.EEXIST, lambda: (m / "s").write_bytes(b"would destroy link s.age"))
    (m / "y").write_bytes(b"file y")
    expect_errno(errno.EEXIST, lambda: os.rename(m / "y", m / "d"))
    (m / "e").mkdir()
    expect_errno(errno.EEXIST, lambda: os.rename(m / "e", m / "y.age"))
    os.symlink("t", m / "l")
    expect_errno(errno.EEXIST, lambda: os.rename(m / "l", m / "x.age"))
    mount.remount()  # every file published by now: the same refusals
    expect_errno(errno.EEXIST, lambda: (m / "x.age").mkdir())
    expect_errno(errno.EEXIST, lambda: os.rename(m / "e", m / "x.age"))
    expect_errno(errno.EEXIST, lambda: os.rename(m / "y", m / "s"))
    assert (m / "x").read_bytes() == b"file x" and (m / "y").read_bytes() == b"file y"
    assert sorted(os.listdir(m)) == ["d.age", "e", "l", "s.age", "x", "y"]
    assert (m / "d.age").is_dir() and os.readlink(m / "s.age") == "t"
    mount.assert_store_matches()


def test_a_directory_made_behind_the_mounts_back_keeps_everything_working(
    mount: Daemon,
) -> None:
    """A directory `x.age` made in the store directly: shown as itself, `x` stays free but
    cannot be created (its backing name is taken), and lookups and listings keep working."""
    (mount.store / "x.age").mkdir()
    (mount.mnt / "other").write_bytes(b"other")
    assert sorted(os.listdir(mount.mnt)) == ["other", "x.age"]
    assert (mount.mnt / "x.age").is_dir()
    expect_errno(errno.ENOENT, lambda: os.stat(mount.mnt / "x"))
    expect_errno(errno.EEXIST, lambda: (mount.mnt / "x").write_bytes(b"refused"))
    assert (mount.mnt / "other").read_bytes() == b"other"
    mount.assert_store_matches()


# --- 12.8: special files ---------------------------------------------------------------------


def make_specials(root: Path) -> None:
    os.mkfifo(root / "fifo", 0o640)
    dir_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:  # bound through /proc: the test's own path may exceed a socket address's 108 bytes
        with socket.socket(socket.AF_UNIX) as sock:
            sock.bind(f"/proc/self/fd/{dir_fd}/sock")
    finally:
        os.close(dir_fd)
    os.mknod(root / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    os.mknod(root / "blk", 0o600 | stat.S_IFBLK, os.makedev(7, 200))


def specials(root: Path) -> dict[str, tuple[int, ...]]:
    """What each special file in `root` shows: type, mode, device, owner, and times for the
    one whose times were set."""
    out = {}
    for name in sorted(os.listdir(root)):
        st = os.lstat(root / name)
        out[name] = (
            stat.S_IFMT(st.st_mode),
            stat.S_IMODE(st.st_mode),
            st.st_rdev,
            st.st_uid,
            st.st_gid,
            *((st.st_atime_ns, st.st_mtime_ns) if name == "null" else ()),
        )
    return out


def test_special_files_are_made_shown_changed_and_kept(mount: Daemon, plain: Path) -> None:
    """FIFOs, sockets and devices: the same node as in a plain directory, with its mode,
    owner, times and device number; chmod, chown, utime, rename and unlink as there."""
    for root in (mount.mnt, plain):
        make_specials(root)
        os.chmod(root / "fifo", 0o604)
        os.chown(root / "sock", 1234, 5678)
        os.utime(root / "null", ns=(1_000_000_123, 2_000_000_456))
        os.rename(root / "blk", root / "blk2")
        os.unlink(root / "sock")
    got, want = specials(mount.mnt), specials(plain)
    assert got == want
    with opened(mount.mnt / "fifo", os.O_RDWR) as fd:  # a FIFO through the mount works
        os.write(fd, b"through the pipe")
        assert os.read(fd, 100) == b"through the pipe"
    fifo_times = os.lstat(mount.mnt / "fifo").st_mtime_ns, os.lstat(mount.mnt / "fifo").st_ctime_ns
    mount.remount()
    assert specials(mount.mnt) == want
    after = os.lstat(mount.mnt / "fifo")
    assert (after.st_mtime_ns, after.st_ctime_ns) == fifo_times
    mount.assert_store_matches()


def test_special_file_names_collide_like_any_other(mount: Daemon) -> None:
    m = mount.mnt
    (m / "f").write_bytes(b"file f")
    expect_errno(errno.EEXIST, lambda: os.mkfifo(m / "f.age"))
    os.mkfifo(m / "p.age")
    expect_errno(errno.EEXIST, lambda: (m / "p").write_bytes(b"would destroy fifo p.age"))
    expect_errno(errno.EEXIST, lambda: os.rename(m / "f", m / "p"))
    assert sorted(os.listdir(m)) == ["f", "p.age"]
    assert stat.S_ISFIFO(os.lstat(m / "p.age").st_mode)
    mount.assert_store_matches()
