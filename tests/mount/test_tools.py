"""Ordinary tools on a mounted store, each compared with the same operation on a plain directory.

Every test ends with the store check: after a clean unmount each backing file decrypts with the
Go `age` CLI to exactly what the mount showed (I4), and nothing is left in `.cagefs/tmp` (I3).
"""

import errno
import mmap
import os
import random
import sqlite3
import subprocess
from pathlib import Path

import pytest

from cagefs.store.sealer import MAX_SEALERS

from .helpers import (
    CHUNK,
    SUFFIX,
    Daemon,
    assert_same_tree,
    file_contains,
    make_tree,
    opened,
    read_all,
    run,
    sh,
    tree,
)

MIB = 1 << 20


@pytest.fixture
def src(tmp_path: Path) -> Path:
    path = tmp_path / "src"
    path.mkdir()
    make_tree(path, random.Random(1))
    return path


def both(mounted: Daemon, plain: Path) -> tuple[Path, Path]:
    return mounted.mnt, plain


def test_cp_a_tree_and_diff(mounted: Daemon, plain: Path, src: Path, tmp_path: Path) -> None:
    for root in both(mounted, plain):
        run("cp", "-a", src, root / "t")
    run("diff", "-r", "--no-dereference", mounted.mnt / "t", plain / "t")
    assert_same_tree(tree(mounted.mnt, modes=True), tree(plain, modes=True), "cp -a")
    run("cp", "-a", mounted.mnt / "t", tmp_path / "back")
    run("diff", "-r", "--no-dereference", tmp_path / "back", src)
    mounted.assert_store_matches()


def test_cat(mounted: Daemon, plain: Path, src: Path) -> None:
    for root in both(mounted, plain):
        sh(
            f"cat {src}/a/big.bin {src}/small.txt > {root}/joined; cat {root}/joined > {root}/c2",
            root,
        )
    assert run("cat", mounted.mnt / "joined") == run("cat", plain / "joined")
    assert_same_tree(tree(mounted.mnt), tree(plain), "cat")
    mounted.assert_store_matches()


def test_dd(mounted: Daemon, plain: Path, src: Path) -> None:
    big = src / "a" / "big.bin"
    for root in both(mounted, plain):
        f = root / "disk.img"
        run("dd", f"if={big}", f"of={f}", "bs=1M", "status=none")
        run("dd", f"if={src}/a/b/c/deep.bin", f"of={f}", "bs=1M", "seek=1", "count=1",
            "conv=notrunc", "status=none")  # fmt: skip
        run("dd", f"if={src}/one", f"of={f}", "bs=1", "seek=70000", "conv=notrunc", "status=none")
        run(
            "dd",
            f"if={src}/small.txt",
            f"of={f}",
            "bs=1K",
            "seek=7000",
            "conv=notrunc",
            "status=none",
        )  # fmt: skip  (beyond EOF: leaves a hole)
        run("dd", f"if={f}", f"of={root}/tail", "bs=4K", "skip=100", "status=none")
    assert run("cat", mounted.mnt / "disk.img") == run("cat", plain / "disk.img")
    assert_same_tree(tree(mounted.mnt), tree(plain), "dd")
    mounted.assert_store_matches()


def test_dd_with_block_sizes_that_change(mounted: Daemon, plain: Path) -> None:
    """`dd bs=64K` for 2 MiB, then 1 MiB blocks, then 1000-byte ones, into one file. A full
    batch of small writes followed by a large one once overflowed the writer's batch; how
    writes group on their way to a sealer is timing-dependent, so the deterministic check of
    that is tests/test_properties.py, and this one keeps the tools' view honest."""
    data = os.urandom(2 * 1024 * 1024 + 5 * 1024 * 1024 + 3000)
    for root in both(mounted, plain):
        run("dd", f"of={root}/mixed", "bs=64K", "count=32", "iflag=fullblock", "status=none",
            input=data)  # fmt: skip
        run("dd", f"of={root}/mixed", "bs=1M", "seek=2", "count=5", "conv=notrunc",
            "iflag=fullblock", "status=none", input=data[2 << 20 : 7 << 20])  # fmt: skip
        run("dd", f"of={root}/mixed", "bs=1000", f"seek={7 << 20}", "oflag=seek_bytes",
            "conv=notrunc", "status=none", input=data[7 << 20 :])  # fmt: skip
    assert (mounted.mnt / "mixed").read_bytes() == data == (plain / "mixed").read_bytes()
    mounted.assert_store_matches()


def test_more_files_streamed_at_once_than_there_are_sealers(mounted: Daemon, plain: Path) -> None:
    """`dd`s side by side, one file each: past `MAX_SEALERS` a stream seals on the event loop,
    and every request's data arrives in one of pyfuse3's buffers, reused by the next request:
    whatever kept a buffer past its request would show here as another file's bytes."""
    count, size = MAX_SEALERS + 2, 5 * MIB + 4321
    data = [random.Random(n).randbytes(size) for n in range(count)]
    for root in both(mounted, plain):
        writers = [
            subprocess.Popen(
                ["dd", f"of={root}/f{n}", "bs=1M", "iflag=fullblock", "status=none"],
                stdin=subprocess.PIPE,
            )
            for n in range(count)
        ]
        for offset in range(0, size, MIB):  # a MiB to each in turn: all of them stream at once
            for writer, contents in zip(writers, data, strict=True):
                assert writer.stdin is not None
                writer.stdin.write(contents[offset : offset + MIB])
        for writer in writers:
            assert writer.stdin is not None
            writer.stdin.close()
        assert [writer.wait(600) for writer in writers] == [0] * count
    for n in range(count):
        assert (mounted.mnt / f"f{n}").read_bytes() == data[n] == (plain / f"f{n}").read_bytes()
    mounted.assert_store_matches()


def test_tar_c_and_x(mounted: Daemon, plain: Path, src: Path, tmp_path: Path) -> None:
    for root in both(mounted, plain):
        run("tar", "cf", root / "t.tar", "-C", src, ".")
        (root / "x").mkdir()
        run("tar", "xf", root / "t.tar", "-C", root / "x")
    run("diff", "-r", "--no-dereference", mounted.mnt / "x", src)
    (tmp_path / "out").mkdir()
    run("tar", "cf", tmp_path / "out.tar", "-C", mounted.mnt / "x", ".")
    run("tar", "xf", tmp_path / "out.tar", "-C", tmp_path / "out")
    run("diff", "-r", "--no-dereference", tmp_path / "out", src)
    assert_same_tree(tree(mounted.mnt / "x", modes=True), tree(plain / "x", modes=True), "tar x")
    mounted.assert_store_matches()


def test_rsync(mounted: Daemon, plain: Path, src: Path) -> None:
    for root in both(mounted, plain):
        run("rsync", "-a", f"{src}/", f"{root}/r/")
    (src / "small.txt").write_bytes(b"changed " * 1000)
    (src / "a" / "big.bin").write_bytes(random.Random(2).randbytes(2 << 20))
    (src / "one").unlink()
    for root in both(mounted, plain):
        run("rsync", "-a", "--delete", f"{src}/", f"{root}/r/")  # temp + rename
        run("rsync", "-a", "--inplace", f"{src}/", f"{root}/inplace/")
    (src / "a" / "b" / "c" / "deep.bin").write_bytes(b"x" * 123_456)
    for root in both(mounted, plain):
        run("rsync", "-a", "--inplace", "--no-whole-file", f"{src}/", f"{root}/inplace/")
    run("diff", "-r", "--no-dereference", mounted.mnt / "inplace", src)
    assert_same_tree(tree(mounted.mnt, modes=True), tree(plain, modes=True), "rsync")
    mounted.assert_store_matches()


def sqlite_workload(path: Path, seed: int) -> list[tuple]:
    rng = random.Random(seed)
    db = sqlite3.connect(path)
    try:
        db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT, n INTEGER)")
        with db:
            db.executemany(
                "INSERT INTO t VALUES (?, ?, ?)",
                [(i, "x" * rng.randrange(200), 0) for i in range(2000)],
            )
        for _ in range(50):
            with db:
                for _ in range(40):
                    i = rng.randrange(2500)
                    db.execute(
                        "INSERT OR REPLACE INTO t VALUES (?, ?, ?)",
                        (i, rng.randbytes(rng.randrange(300)).hex(), rng.randrange(1 << 30)),
                    )
                db.execute("DELETE FROM t WHERE id = ?", (rng.randrange(2500),))
        assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        return db.execute("SELECT * FROM t ORDER BY id").fetchall()
    finally:
        db.close()


@pytest.mark.parametrize("journal", ["delete", "wal"])
def test_sqlite_random_updates(mounted: Daemon, plain: Path, journal: str) -> None:
    rows = []
    for root in both(mounted, plain):
        db = root / "db.sqlite"
        sqlite3.connect(db).execute(f"PRAGMA journal_mode={journal}").close()
        rows.append(sqlite_workload(db, seed=7))
        assert run("sqlite3", db, "PRAGMA integrity_check;").strip() == b"ok"
    assert rows[0] == rows[1]
    mounted.assert_store_matches()


def test_git(mounted: Daemon, plain: Path, src: Path) -> None:
    env = dict(os.environ, GIT_AUTHOR_DATE="2020-01-01T00:00:00Z")
    env["GIT_COMMITTER_DATE"] = env["GIT_AUTHOR_DATE"]
    git = [
        "git",
        "-c",
        "user.name=Test",
        "-c",
        "user.email=t@example.org",
        "-c",
        "init.defaultBranch=main",
    ]
    heads = []
    for root in both(mounted, plain):
        repo = root / "repo"
        run("cp", "-a", src, repo)
        for args in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "first"]):
            subprocess.run([*git, *args], cwd=repo, env=env, check=True, capture_output=True)
        (repo / "small.txt").write_text("second version\n")
        subprocess.run([*git, "commit", "-qam", "second"], cwd=repo, env=env, check=True)
        run("git", "fsck", "--strict", cwd=repo)
        heads.append(run("git", "log", "--format=%H %s", cwd=repo))
    assert heads[0] == heads[1] and len(heads[0].splitlines()) == 2
    mounted.assert_store_matches()


def test_editor_style_save(mounted: Daemon, plain: Path) -> None:
    for root in both(mounted, plain):
        (root / "doc.txt").write_text("draft 1\n" * 1000)
        with opened(root / "doc.txt", os.O_RDONLY) as reader:
            for version in range(2, 6):
                tmp = root / ".doc.txt.swp"
                with opened(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600) as fd:
                    os.write(fd, f"draft {version}\n".encode() * (1000 * version))
                    os.fsync(fd)
                os.rename(tmp, root / "doc.txt")
                assert (root / "doc.txt").read_text() == f"draft {version}\n" * (1000 * version)
            assert read_all(reader) == b"draft 1\n" * 1000  # the old handle keeps the old file
    assert_same_tree(tree(mounted.mnt), tree(plain), "editor save")
    mounted.assert_store_matches()


def test_append_redirect(mounted: Daemon, plain: Path) -> None:
    for root in both(mounted, plain):
        sh('for i in $(seq 1 300); do echo "line $i" >> log.txt; done', root)
        sh("head -c 200000 /dev/zero | tr '\\0' z >> log.txt; echo end >> log.txt", root)
    assert (mounted.mnt / "log.txt").read_bytes() == (plain / "log.txt").read_bytes()
    mounted.assert_store_matches()


def test_truncate_shrink_and_grow(mounted: Daemon, plain: Path, src: Path) -> None:
    for root in both(mounted, plain):
        run("cp", src / "a" / "big.bin", root / "f")
        run("cp", src / "chunk+1", root / "g")
    for size in ["1000000", "65536", "70000", "5M", "100", "0", "3", "+200K"]:
        for root in both(mounted, plain):
            run("truncate", "-s", size, root / "f")
            run("truncate", "-s", size, root / "g")
        for name in ("f", "g"):
            assert os.stat(mounted.mnt / name).st_size == os.stat(plain / name).st_size, size
            assert (mounted.mnt / name).read_bytes() == (plain / name).read_bytes(), size
    assert (mounted.mnt / "f").read_bytes()[3:] == bytes(200 * 1024), "holes must read as zeros"
    assert_same_tree(tree(mounted.mnt), tree(plain), "truncate")
    mounted.assert_store_matches()


def test_symlinks(mounted: Daemon, plain: Path) -> None:
    for root in both(mounted, plain):
        (root / "d").mkdir()
        (root / "d" / "target").write_text("pointed at\n")
        run("ln", "-s", "d/target", root / "rel")
        run("ln", "-s", "/nonexistent/x", root / "dangling")
        run("ln", "-s", "d", root / "dirlink")
        run("ln", "-sfn", "d/target", root / "dangling")  # replace a symlink
        assert (root / "rel").read_text() == "pointed at\n"
        assert (root / "dirlink" / "target").read_text() == "pointed at\n"
        assert os.lstat(root / "rel").st_size == len("d/target")
    assert_same_tree(tree(mounted.mnt), tree(plain), "ln -s")
    assert os.path.islink(mounted.store / "rel"), "a symlink is stored as a symlink"
    mounted.assert_store_matches()


def test_mv_across_directories(mounted: Daemon, plain: Path, src: Path) -> None:
    for root in both(mounted, plain):
        run("cp", "-a", src, root / "t")
        (root / "other").mkdir()
        run("mv", root / "t" / "a" / "big.bin", root / "other" / "big.bin")
        run("mv", root / "t" / "a" / "b", root / "other" / "b")  # a directory with contents
        run("mv", "-f", root / "t" / "small.txt", root / "other" / "big.bin")  # replace
        run("mv", root / "t", root / "other" / "t2")
    assert not os.path.exists(mounted.store / "t")
    assert_same_tree(tree(mounted.mnt, modes=True), tree(plain, modes=True), "mv")
    mounted.assert_store_matches()


def test_hard_links_work_or_are_refused(mounted: Daemon) -> None:
    """I8: either every name sees every write, or link() fails with EPERM; never divergence."""
    a, b = mounted.mnt / "a", mounted.mnt / "b"
    a.write_bytes(b"first")
    try:
        os.link(a, b)
    except OSError as exc:
        assert exc.errno == errno.EPERM, f"link() failed with {errno.errorcode[exc.errno]}"
        assert not b.exists()
    else:
        a.write_bytes(b"second, longer")
        assert b.read_bytes() == b"second, longer"
        with open(b, "r+b") as f:
            f.seek(3)
            f.write(b"X")
        assert a.read_bytes() == b.read_bytes() == b"secXnd, longer"
        assert os.stat(a).st_nlink == 2 and os.stat(a).st_ino == os.stat(b).st_ino
        mounted.remount()
        assert a.read_bytes() == b.read_bytes() == b"secXnd, longer"
    mounted.assert_store_matches()


def test_rename_and_unlink_open_files(mounted: Daemon, plain: Path) -> None:
    for root in both(mounted, plain):
        with opened(root / "f", os.O_RDWR | os.O_CREAT) as fd:
            os.write(fd, b"hello " * 20000)
            os.rename(root / "f", root / "g")
            os.pwrite(fd, b"after rename", 5)
            assert os.pread(fd, 20, 0) == b"helloafter rename he"
        with opened(root / "u", os.O_RDWR | os.O_CREAT) as fd:
            os.write(fd, b"doomed " * 20000)
            os.unlink(root / "u")
            os.pwrite(fd, b"still here", 100_000)
            assert os.pread(fd, 10, 100_000) == b"still here"
            assert os.fstat(fd).st_size == 140_000
            assert not (root / "u").exists()
        assert not (root / "u").exists()
    assert_same_tree(tree(mounted.mnt), tree(plain), "rename/unlink open")
    mounted.assert_store_matches()


def test_o_append(mounted: Daemon, plain: Path) -> None:
    for root in both(mounted, plain):
        (root / "f").write_bytes(b"start\n" * 20000)
        with (
            opened(root / "f", os.O_WRONLY | os.O_APPEND) as a1,
            opened(root / "f", os.O_WRONLY | os.O_APPEND) as a2,
        ):
            for i in range(50):
                os.lseek(a1, 0, os.SEEK_SET)
                os.write(a1 if i % 2 else a2, f"record {i}\n".encode())
    assert (mounted.mnt / "f").read_bytes() == (plain / "f").read_bytes()
    mounted.assert_store_matches()


def test_mmap_read_and_write(mounted: Daemon, plain: Path) -> None:
    data = random.Random(3).randbytes(3 * CHUNK + 500)
    for root in both(mounted, plain):
        (root / "m").write_bytes(data)
        with open(root / "m", "r+b") as f, mmap.mmap(f.fileno(), 0) as m:
            assert m[:] == data
            m[CHUNK - 10 : CHUNK + 10] = b"M" * 20
            m[-5:] = b"tail!"
            m.flush()
        with open(root / "m", "rb") as f, mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ) as m:
            assert m[CHUNK - 10 : CHUNK + 10] == b"M" * 20
    assert (mounted.mnt / "m").read_bytes() == (plain / "m").read_bytes()
    mounted.assert_store_matches()


def test_chmod_utime_persist_across_remount(mounted: Daemon) -> None:
    f, d = mounted.mnt / "f", mounted.mnt / "d"
    f.write_bytes(b"x" * 1000)
    d.mkdir()
    os.chmod(f, 0o640)
    os.chmod(d, 0o750)
    os.utime(f, ns=(1_000_000_000_123_456_789, 1_200_000_000_987_654_321))
    before = os.stat(f)
    assert before.st_mode & 0o7777 == 0o640
    mounted.remount()
    after = os.stat(f)
    assert after.st_mode & 0o7777 == 0o640
    assert os.stat(d).st_mode & 0o7777 == 0o750
    assert after.st_mtime_ns == 1_200_000_000_987_654_321
    assert after.st_size == 1000
    mounted.assert_store_matches()


def test_statfs_and_name_length(mounted: Daemon) -> None:
    assert os.statvfs(mounted.mnt).f_namemax == 255 - len(SUFFIX)
    (mounted.mnt / ("n" * 251)).write_bytes(b"longest name")
    with pytest.raises(OSError) as exc:
        (mounted.mnt / ("n" * 252)).write_bytes(b"too long")
    assert exc.value.errno == errno.ENAMETOOLONG
    with pytest.raises(OSError) as exc:
        (mounted.mnt / ("d" * 252)).mkdir()
    assert exc.value.errno == errno.ENAMETOOLONG
    mounted.assert_store_matches()


def test_xattr_refused_or_encrypted(mounted: Daemon) -> None:
    f = mounted.mnt / "f"
    f.write_bytes(b"content")
    secret = b"XATTR-SECRET-" + os.urandom(8).hex().encode()
    try:
        os.setxattr(f, "user.note", secret)
    except OSError as exc:
        assert exc.errno == errno.EOPNOTSUPP, errno.errorcode[exc.errno]
    else:
        assert os.getxattr(f, "user.note") == secret
        mounted.remount()
        assert os.getxattr(f, "user.note") == secret
    for dirpath, _, names in os.walk(mounted.store):
        for name in names:
            path = os.path.join(dirpath, name)
            assert not file_contains(path, secret), f"xattr value in plaintext in {path}"
            for attr in os.listxattr(path, follow_symlinks=False):
                assert secret not in os.getxattr(path, attr, follow_symlinks=False)
    mounted.assert_store_matches()


def test_xattrs_are_unsupported_so_the_kernel_stops_asking(mounted: Daemon) -> None:
    """getxattr and listxattr fail like a filesystem without xattrs: the daemon answers ENOSYS
    once and the kernel answers every later call itself (ls -l asked twice per file)."""
    f = mounted.mnt / "f"
    f.write_bytes(b"content")
    for call in (lambda: os.getxattr(f, "user.note"), lambda: os.listxattr(f)):
        for _ in range(2):
            with pytest.raises(OSError) as exc:
                call()
            assert exc.value.errno == errno.EOPNOTSUPP, errno.errorcode[exc.value.errno]


def test_readdir_5000_entries(mounted: Daemon) -> None:
    d = mounted.mnt / "many"
    d.mkdir()
    names = {f"entry-{i:05d}-{'x' * (i % 40)}" for i in range(5000)}
    for name in names:
        os.close(os.open(d / name, os.O_WRONLY | os.O_CREAT, 0o644))
    assert set(os.listdir(d)) == names
    with os.scandir(d) as it:
        assert {e.name for e in it if e.is_file()} == names
    assert len(run("ls", "-1", d).splitlines()) == 5000
    mounted.assert_store_matches()


def test_later_overlapping_write_wins(mounted: Daemon, plain: Path) -> None:
    """Found by the model test: a write that starts before an earlier one must cover it."""
    for root in both(mounted, plain):
        with opened(root / "f", os.O_RDWR | os.O_CREAT | os.O_EXCL) as fd:
            os.pwrite(fd, b"M" * 17, 5)
            os.pwrite(fd, b"w" * 4096, 0)
            assert os.pread(fd, 30, 0) == b"w" * 30
    assert (mounted.mnt / "f").read_bytes() == (plain / "f").read_bytes()
    mounted.assert_store_matches()
