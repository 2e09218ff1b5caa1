"""Names and POSIX semantics: long paths, colliding backing names, special files, modes, rename
flags, readdir, inode numbers, timestamps, nlink. Where POSIX says what must happen, the same
operations run on a plain directory (`plain`) and the results are compared."""

import contextlib
import ctypes
import errno
import os
import shutil
import socket
import stat
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from .helpers import SUFFIX, Daemon, opened, sh

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


# --- 12.12: the caller's mode ----------------------------------------------------------------


def test_mkdir_and_mknod_honour_the_callers_mode_and_umask(mount: Daemon, plain: Path) -> None:
    """`(umask 000; mkdir d)` gives 0777 as anywhere else: the daemon's own umask never
    applies, the caller's always does; a setgid directory passes on its group and bit."""
    script = (
        "(umask 000; mkdir d0 && mkfifo p0 && mkdir -m 1777 t && touch f0);"
        "(umask 027; mkdir d27 && mkfifo p27 && touch f27);"
        "mkdir g && chown :4321 g && chmod 2775 g && (umask 000; mkdir g/sub && touch g/f)"
    )
    for root in (mount.mnt, plain):
        sh(script, root)
    for name in ("d0", "p0", "t", "f0", "d27", "p27", "f27", "g", "g/sub", "g/f"):
        got, want = os.lstat(mount.mnt / name), os.lstat(plain / name)
        assert (oct(got.st_mode), got.st_gid) == (oct(want.st_mode), want.st_gid), name
    mount.assert_store_matches()


# --- 18.3: rename flags ----------------------------------------------------------------------

_libc = ctypes.CDLL(None, use_errno=True)
RENAME_NOREPLACE, RENAME_EXCHANGE, RENAME_WHITEOUT = 1, 2, 4


def renameat2(old: Path, new: Path, flags: int) -> None:
    if _libc.renameat2(-100, os.fsencode(old), -100, os.fsencode(new), flags) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


def test_rename_refuses_the_flags_it_does_not_implement(mount: Daemon) -> None:
    a, b, c = mount.mnt / "a", mount.mnt / "b", mount.mnt / "c"
    a.write_bytes(b"a")
    b.write_bytes(b"b")
    for flags in (RENAME_WHITEOUT, RENAME_NOREPLACE | RENAME_WHITEOUT):
        expect_errno(errno.EINVAL, lambda flags=flags: renameat2(a, c, flags))
    for flags in (RENAME_WHITEOUT, RENAME_EXCHANGE):  # the kernel wants b to exist for EXCHANGE
        expect_errno(errno.EINVAL, lambda flags=flags: renameat2(a, b, flags))
    expect_errno(errno.EEXIST, lambda: renameat2(a, b, RENAME_NOREPLACE))
    assert sorted(os.listdir(mount.mnt)) == ["a", "b"]
    renameat2(a, c, RENAME_NOREPLACE)
    assert sorted(os.listdir(mount.mnt)) == ["b", "c"] and c.read_bytes() == b"a"
    mount.assert_store_matches()


# --- 18.4, 18.5: readdir ---------------------------------------------------------------------


class Dirent(ctypes.Structure):
    _fields_ = [
        ("d_ino", ctypes.c_uint64),
        ("d_off", ctypes.c_int64),
        ("d_reclen", ctypes.c_ushort),
        ("d_type", ctypes.c_ubyte),
        ("d_name", ctypes.c_char * 256),
    ]


_libc.opendir.restype = ctypes.c_void_p
_libc.readdir.restype = ctypes.POINTER(Dirent)
_libc.readdir.argtypes = _libc.rewinddir.argtypes = _libc.closedir.argtypes = [ctypes.c_void_p]


def read_names(handle: int) -> list[str]:
    """Every name readdir(3) returns from here to the end, `.` and `..` included."""
    names = []
    while entry := _libc.readdir(handle):
        names.append(os.fsdecode(entry.contents.d_name))
    return names


def test_readdir_shows_dot_entries_and_rewinddir_shows_new_names(
    mount: Daemon, plain: Path
) -> None:
    """`.` and `..` are listed; after rewinddir(3) the listing is the directory as it is now
    (names created since opendir included, names removed left out)."""
    seen = {}
    for root in (mount.mnt, plain):
        for i in range(300):
            (root / f"old-{i:03d}").write_bytes(b"")
        handle = _libc.opendir(os.fsencode(root))
        assert handle
        try:
            first = read_names(handle)
            for i in range(300):
                (root / f"new-{i:03d}").write_bytes(b"")
            os.unlink(root / "old-000")
            _libc.rewinddir(handle)
            seen[root] = (sorted(first), sorted(read_names(handle)))
        finally:
            _libc.closedir(handle)
    pairs = zip(seen[mount.mnt], seen[plain], ("opendir", "rewinddir"), strict=True)
    for got, want, when in pairs:
        missing, extra = sorted(set(want) - set(got)), sorted(set(got) - set(want))
        assert got == want, f"after {when}: missing {missing[:8]}, extra {extra[:8]}"
    assert {".", ".."} <= set(seen[plain][1]) and "new-299" in seen[plain][1]
    mount.assert_store_matches()


# --- 12.9: inode numbers ---------------------------------------------------------------------


def drop_caches() -> None:
    """Make the kernel forget every inode it can (it sends FORGET for them)."""
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("2")


def test_a_path_keeps_its_inode_number(mounted: Daemon) -> None:
    """Across the kernel's forget, publishes and renames (tar, rsync, find and git compare
    st_ino); only a new file at a removed file's name may get a new one."""
    m = mounted.mnt
    (m / "d" / "sub").mkdir(parents=True)
    (m / "d" / "sub" / "f").write_bytes(b"f" * 100_000)
    (m / "g").write_bytes(b"unpublished when first seen")
    os.symlink("t", m / "l")
    os.mkfifo(m / "p")
    names = ["d", "d/sub", "d/sub/f", "g", "l", "p"]
    first = {name: os.lstat(m / name).st_ino for name in names}
    assert len(set(first.values())) == len(names)
    with open(m / "g", "rb+") as f:
        os.fsync(f.fileno())
    drop_caches()
    assert {name: os.lstat(m / name).st_ino for name in names} == first
    os.rename(m / "d", m / "e")
    os.rename(m / "g", m / "e" / "g")
    drop_caches()
    moved = {"e": "d", "e/sub": "d/sub", "e/sub/f": "d/sub/f", "e/g": "g", "l": "l", "p": "p"}
    assert {new: os.lstat(m / new).st_ino for new in moved} == {
        new: first[old] for new, old in moved.items()
    }
    mounted.assert_store_matches()


# --- 18.10: nlink of what has no name left ---------------------------------------------------


def test_an_open_entry_without_a_name_has_no_links(mount: Daemon, plain: Path) -> None:
    """fstat on a directory replaced by rename or removed, and on a removed file, while
    open: nlink 0, as on any local filesystem."""
    got = {}
    for root in (mount.mnt, plain):
        for name in ("replaced", "other", "removed"):
            (root / name).mkdir()
        (root / "f").write_bytes(b"f")
        fds = {name: os.open(root / name, os.O_RDONLY) for name in ("replaced", "removed", "f")}
        try:
            os.rename(root / "other", root / "replaced")
            os.rmdir(root / "removed")
            os.unlink(root / "f")
            got[root] = {name: os.fstat(fd).st_nlink for name, fd in fds.items()}
        finally:
            for fd in fds.values():
                os.close(fd)
    assert got[mount.mnt] == got[plain]
    mount.assert_store_matches()


# --- 12.10, 18.9: timestamps -----------------------------------------------------------------


def times(path: Path) -> tuple[int, int]:
    st = os.lstat(path)
    return st.st_mtime_ns, st.st_ctime_ns


def publish(mount: Daemon, path: Path) -> None:
    """Make sure `path`'s last version is published (fsync publishes at once)."""
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def test_a_directory_changes_times_when_its_names_do(mounted: Daemon, plain: Path) -> None:
    """create, unlink, rename, mkdir, rmdir, symlink, mknod each move the directory's mtime
    and ctime at once, as the directory shows them (no waiting for a publish)."""
    steps = [
        lambda d: (d / "f").write_bytes(b"new file"),
        lambda d: os.rename(d / "f", d / "g"),
        lambda d: os.unlink(d / "g"),
        lambda d: (d / "h").write_bytes(b"h") or os.rename(d / "h", d / "sub"),
        lambda d: os.mkdir(d / "e"),
        lambda d: os.rmdir(d / "e"),
        lambda d: os.symlink("t", d / "l"),
        lambda d: os.mkfifo(d / "p"),
    ]
    changed = {}
    for root in (mounted.mnt, plain):
        d = root / "d"
        d.mkdir()
        os.utime(d, ns=(0, 0))
        old = (0, times(d)[1])
        changed[root] = []
        for step in steps:
            step(d)
            now = times(d)
            changed[root].append((now[0] != old[0], now[1] != old[1]))
            os.utime(d, ns=(0, 0))
            old = (0, times(d)[1])
    assert changed[mounted.mnt] == changed[plain]
    mounted.assert_store_matches()


def test_publishing_moves_no_time(mounted: Daemon) -> None:
    """What a file and its directory show does not change when the file is published (nor
    after the kernel forgets them): a file's ctime and a directory's mtime stay put."""
    m = mounted.mnt
    (m / "d").mkdir()
    f = m / "d" / "f"
    f.write_bytes(b"first version")
    shown = times(f), times(m / "d")
    time.sleep(0.01)  # so that a later clock reading would differ (not a wait for anything)
    publish(mounted, f)
    drop_caches()
    assert (times(f), times(m / "d")) == shown
    mounted.remount()
    assert times(m / "d")[0] == shown[1][0]
    mounted.assert_store_matches()


def test_times_round_trip_exactly(mounted: Daemon, plain: Path) -> None:
    """Before 1970, far in the future, with nanoseconds; reading changes no ctime."""
    stamps = [(-1_000_000_001, -86_400_000_000_123), (1, 999_999_999), (2**40 + 7, 2**33 + 1)]
    for root in (mounted.mnt, plain):
        for i, ns in enumerate(stamps):
            (root / f"f{i}").write_bytes(b"x" * i)
            publish(mounted, root / f"f{i}")  # times set on the store's file, not open content
            (root / f"d{i}").mkdir()
            os.symlink("t", root / f"l{i}")
            for name in (f"f{i}", f"d{i}", f"l{i}"):
                os.utime(root / name, ns=ns, follow_symlinks=False)

    def shown(root: Path) -> dict[str, tuple[int, int]]:
        out = {}
        for name in sorted(os.listdir(root)):
            st = os.lstat(root / name)
            out[name] = (st.st_atime_ns, st.st_mtime_ns)
        return out

    want = shown(plain)
    assert shown(mounted.mnt) == want
    drop_caches()  # a stat that is not answered from the kernel's cache changes no atime
    assert shown(mounted.mnt) == want
    ctime = os.lstat(mounted.mnt / "f2").st_ctime_ns
    (mounted.mnt / "f2").read_bytes()
    drop_caches()
    assert os.lstat(mounted.mnt / "f2").st_ctime_ns == ctime
    mounted.remount()
    got = shown(mounted.mnt)
    assert {k: v[1] for k, v in got.items()} == {k: v[1] for k, v in want.items()}
    mounted.assert_store_matches()


def test_a_refused_rename_changes_nothing(mount: Daemon, plain: Path) -> None:
    """A directory renamed over a non-empty one fails; both stay as they were, usable."""
    for root in (mount.mnt, plain):
        (root / "a").mkdir()
        (root / "b" / "inner").mkdir(parents=True)
        expect_errno(errno.ENOTEMPTY, lambda root=root: os.rename(root / "a", root / "b"))
        os.rmdir(root / "b" / "inner")
        os.rename(root / "a", root / "b")
    assert os.listdir(mount.mnt) == os.listdir(plain) == ["b"]
    mount.assert_store_matches()


def test_files_unlinked_before_their_publish_leave_nothing_open(mount: Daemon) -> None:
    """A file removed while its version waits to be published: the version is dropped and
    the daemon keeps no descriptor of it (pjdfstest left 208 behind). Versions made ahead,
    never named yet, show as `.cagefs/tmp/#INODE`: not those."""
    for i in range(20):
        (mount.mnt / f"f{i}").write_bytes(b"short-lived")
        os.unlink(mount.mnt / f"f{i}")
    fd = os.open(mount.mnt, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)  # a publish round: every waiting version is published or dropped
    finally:
        os.close(fd)
    drop_caches()
    deadline = time.monotonic() + 30  # the reclaim thread closes them (only guards a hang)
    while (held := temps_held(mount)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert held == []


def temps_held(mount: Daemon) -> list[str]:
    held = []
    for link in Path(f"/proc/{mount.pid}/fd").iterdir():
        with contextlib.suppress(FileNotFoundError):  # closed meanwhile
            target = os.readlink(link)
            if "/.cagefs/tmp/" in target and "/.cagefs/tmp/#" not in target:
                held.append(target)
    return held
