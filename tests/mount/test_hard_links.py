"""Hard links (I8): every name of a file sees every write, in the mount and in the store.

In the store every name is a hard link to one backing age file, so `age -d` of any name gives
the file. A new version reaches every name through a durable intent (store/links.py): a crash
in the middle leaves all names old or all new, and the next mount finishes it.
"""

import json
import os
import random
import re
import shutil
import signal
import subprocess
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

from .helpers import SUFFIX, Daemon, cagefs, decrypt_backing, opened, run, sh

META = ".cagefs"


def groups(root: Path) -> list[list[str]]:
    """The names of every file with several links, grouped by inode (sorted)."""
    by_ino: dict[int, list[str]] = defaultdict(list)
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        if path.is_file() and not path.is_symlink() and META not in path.parts:
            by_ino[st.st_ino].append(str(path.relative_to(root)).removesuffix(SUFFIX))
            assert st.st_nlink >= len(by_ino[st.st_ino]), f"{path}: nlink {st.st_nlink}"
    return sorted(names for names in by_ino.values() if len(names) > 1)


def assert_backing_linked(daemon: Daemon, names: list[str], content: bytes) -> None:
    """In the store: the names are one file (one inode), and each decrypts with `age -d`."""
    backing = [daemon.store / f"{name}{SUFFIX}" for name in names]
    inodes = {path.stat().st_ino for path in backing}
    assert len(inodes) == 1, f"{names} are {len(inodes)} backing files, not one"
    for path in backing:
        assert decrypt_backing(path, daemon.identity) == content, f"age -d {path}"


def test_names_share_one_file(mounted: Daemon) -> None:
    mnt = mounted.mnt
    (mnt / "d").mkdir()
    a, b, c = mnt / "a", mnt / "d" / "b", mnt / "c"
    a.write_bytes(b"first\n")
    os.link(a, b)
    os.link(b, c)
    assert {os.stat(p).st_ino for p in (a, b, c)} == {os.stat(a).st_ino}
    assert [os.stat(p).st_nlink for p in (a, b, c)] == [3, 3, 3]
    with opened(a, os.O_RDWR) as fd:  # one open file: writes through a name show at once
        os.pwrite(fd, b"FIRST", 0)
        assert b.read_bytes() == b"FIRST\n"
        with opened(c, os.O_WRONLY | os.O_APPEND) as other:
            os.write(other, b"more\n")
        assert os.pread(fd, 100, 0) == b"FIRST\nmore\n"
    mounted.remount()
    assert [p.read_bytes() for p in (a, b, c)] == [b"FIRST\nmore\n"] * 3
    assert os.stat(a).st_ino == os.stat(c).st_ino and os.stat(b).st_nlink == 3
    assert_backing_linked(mounted, ["a", "d/b", "c"], b"FIRST\nmore\n")

    with opened(b, os.O_RDWR) as fd:  # open handles outlive the names
        a.unlink()
        assert os.stat(c).st_nlink == 2 and os.fstat(fd).st_nlink == 2
        os.rename(c, mnt / "d" / "e")
        assert os.stat(mnt / "d" / "e").st_ino == os.fstat(fd).st_ino
        os.rename(b, mnt / "d" / "e")  # two names of one file: POSIX leaves both
        assert b.exists()
        b.unlink()
        os.write(fd, b"after unlinks\n")
        assert (mnt / "d" / "e").read_bytes().startswith(b"after unlinks\n")
    assert os.stat(mnt / "d" / "e").st_nlink == 1
    (mnt / "d" / "e").unlink()
    assert sorted(os.listdir(mnt)) == ["d"] and os.listdir(mnt / "d") == []
    mounted.assert_store_matches()


def test_names_of_a_new_file_reach_the_store_at_its_publish(mounted: Daemon) -> None:
    """A file not yet published (still open): its names appear in the store together."""
    mnt = mounted.mnt
    with opened(mnt / "new", os.O_WRONLY | os.O_CREAT) as fd:
        os.write(fd, b"x" * 200_000)
        os.link(mnt / "new", mnt / "twin")
        assert os.stat(mnt / "twin").st_nlink == 2
        os.write(fd, b"y")
    assert (mnt / "twin").read_bytes() == b"x" * 200_000 + b"y"
    mounted.stop_clean()
    assert_backing_linked(mounted, ["new", "twin"], b"x" * 200_000 + b"y")
    mounted.start()
    mounted.assert_store_matches()


def test_unknown_names_get_every_version(mounted: Daemon) -> None:
    """After a remount, a write through one name reaches names nobody has looked up yet, and
    an open file unlinked by its only looked-up name lives on under its others."""
    mnt = mounted.mnt
    (mnt / "far" / "away").mkdir(parents=True)
    (mnt / "a").write_bytes(b"v1\n")
    os.link(mnt / "a", mnt / "far" / "away" / "b")
    os.link(mnt / "a", mnt / "c")
    mounted.remount()
    with open(mnt / "a", "ab") as f:  # only `a` is looked up
        f.write(b"v2\n")
        f.flush()
        os.fsync(f.fileno())
    assert_backing_linked(mounted, ["a", "far/away/b", "c"], b"v1\nv2\n")
    mounted.remount()
    with opened(mnt / "a", os.O_WRONLY | os.O_APPEND) as fd:
        os.unlink(mnt / "a")
        os.write(fd, b"v3\n")
    assert (mnt / "c").read_bytes() == b"v1\nv2\nv3\n"
    assert os.stat(mnt / "far" / "away" / "b").st_nlink == 2
    mounted.assert_store_matches()


def test_a_name_in_another_directory_than_the_first_shows_the_size(
    daemons: Callable[..., Daemon],
) -> None:
    """A lookup by a name in another directory than the node's first name reads the header
    of the entry it names (a size of 0 was cached for the new version, seen through `z`)."""
    daemon = daemons("auto")
    daemon.start()
    mnt = daemon.mnt
    (mnt / "d").mkdir()
    (mnt / "x").write_bytes(b"v1\n")
    os.link(mnt / "x", mnt / "d" / "y")
    os.link(mnt / "x", mnt / "z")
    daemon.remount()
    assert (mnt / "d" / "y").read_bytes() == b"v1\n"  # the node's first name: d/y
    with open(mnt / "z", "ab") as f:  # a new version, not yet stat'ed by any name
        f.write(b"v2\n")
    time.sleep(2.5)  # past the kernel's entry timeout: the next stat of `z` is a lookup
    for name in ("z", "d/y", "x"):
        assert os.stat(mnt / name).st_size == 6, f"{name}: size {os.stat(mnt / name).st_size}"
        assert (mnt / name).read_bytes() == b"v1\nv2\n", name


def hard_linked_tree(root: Path) -> None:
    (root / "x" / "y").mkdir(parents=True)
    (root / "one").write_bytes(os.urandom(100_000))
    os.link(root / "one", root / "x" / "one-again")
    os.link(root / "one", root / "x" / "y" / "one-more")
    (root / "two").write_bytes(b"two\n")
    os.link(root / "two", root / "x" / "two")
    (root / "alone").write_bytes(b"alone\n")
    (root / "empty").write_bytes(b"")
    os.link(root / "empty", root / "x" / "y" / "empty")


def test_cp_tar_rsync_keep_hard_links(mounted: Daemon, tmp_path: Path) -> None:
    src = tmp_path / "src"
    hard_linked_tree(src)
    want = groups(src)
    mnt = mounted.mnt
    run("cp", "-a", src, mnt / "cp")
    (mnt / "tar").mkdir()
    sh(f"tar -C {src} -cf - . | tar -C {mnt / 'tar'} -xf -", cwd=tmp_path)
    run("rsync", "-aH", f"{src}/", f"{mnt / 'rsync'}/")
    for copy in ("cp", "tar", "rsync"):
        assert groups(mnt / copy) == want, f"{copy}: hard links not kept"
        run("diff", "-r", src, mnt / copy)
    run("rsync", "-aH", f"{mnt / 'rsync'}/", f"{tmp_path / 'back'}/")  # and out again
    assert groups(tmp_path / "back") == want
    mounted.stop_clean()
    for copy in ("cp", "tar", "rsync"):
        assert groups(mounted.store / copy) == want, f"{copy}: not one backing file per group"
    mounted.start()
    mounted.assert_store_matches()


def test_an_unfinished_publish_is_finished_at_mount(daemons: Callable[..., Daemon]) -> None:
    """A hand-made intent, as a crash leaves it: one name already new, one old, a temp link
    beside it. The mount finishes it: every name new (one file), nothing left over."""
    daemon = daemons()
    daemon.start()
    mnt, store = daemon.mnt, daemon.store
    (mnt / "d").mkdir()
    (mnt / "a").write_bytes(b"old\n")
    os.link(mnt / "a", mnt / "d" / "b")
    os.link(mnt / "a", mnt / "c")
    (mnt / "version").write_bytes(b"new version\n")
    daemon.stop_clean()
    links = store / META / "links"
    links.mkdir(exist_ok=True)
    os.rename(store / "version.age", links / "cut.age")
    names = [["", "a.age", ".cagefs-link-1"], ["d", "b.age", ".cagefs-link-2"]]
    names.append(["", "c.age", ".cagefs-link-3"])
    (links / "cut.json").write_text(json.dumps({"names": names}))
    os.link(links / "cut.age", store / ".cagefs-link-1")  # a: linked, renamed over
    os.rename(store / ".cagefs-link-1", store / "a.age")
    os.link(links / "cut.age", store / "d" / ".cagefs-link-2")  # b: linked, not renamed
    (store / META / "tmp" / "v-stray").write_bytes(b"a stray temp")
    os.link(store / META / "tmp" / "v-stray", links / "never-recorded.age")

    daemon.start()
    assert "finished 1 publish" in daemon.log_text()
    assert [(mnt / n).read_bytes() for n in ("a", "d/b", "c")] == [b"new version\n"] * 3
    assert os.stat(mnt / "a").st_nlink == 3
    assert sorted(os.listdir(links)) == [] and not list(store.rglob(".cagefs-link-*"))
    assert_backing_linked(daemon, ["a", "d/b", "c"], b"new version\n")
    daemon.assert_store_matches()


def test_a_crash_mid_publish_leaves_all_names_old_or_all_new(
    daemons: Callable[..., Daemon],
) -> None:
    """`kill -9` at random moments while a file with many names is rewritten and fsync'ed
    over and over: after each remount every name is the same complete version."""
    daemon = daemons(options=["--publish-interval", "0.05"])
    daemon.start()
    mnt = daemon.mnt
    names = [f"n{i:03}" for i in range(60)]
    (mnt / "sub").mkdir()
    (mnt / names[0]).write_bytes(b"version 0\n")
    for name in names[1:]:
        os.link(mnt / names[0], mnt / ("sub" if int(name[1:]) % 2 else "") / name)
    paths = [("sub/" if int(n[1:]) % 2 else "") + n for n in names]
    rng = random.Random(12)
    cut = 0
    for round_ in range(12):
        writer = subprocess.Popen(
            ["sh", "-c", f"i=0; while :; do i=$((i+1)); echo \"round {round_} write $i\" | "
             f"dd of={mnt / names[0]} conv=fsync status=none; done"],
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        time.sleep(rng.uniform(0.3, 1.2))
        os.killpg(writer.pid, signal.SIGSTOP)  # nothing writes into the bare mount point
        daemon.kill9()
        os.killpg(writer.pid, signal.SIGKILL)
        writer.wait()
        cut += bool(list((daemon.store / META / "links").glob("*.json")))
        daemon.start()
        contents = {(mnt / p).read_bytes() for p in paths}
        assert len(contents) == 1, f"round {round_}: names differ: {sorted(contents)[:3]}"
        assert re.fullmatch(rb"version 0\n|round \d+ write \d+\n", contents.pop())
        assert {os.stat(mnt / p).st_nlink for p in paths} == {len(paths)}
        assert len({(daemon.store / f"{p}{SUFFIX}").stat().st_ino for p in paths}) == 1
        assert not list(daemon.store.rglob(".cagefs-link-*")), "temp links left behind"
    print(f"{cut} of 12 kills cut a publish between its intent and its end")
    shutil.rmtree(mnt / "sub")
    daemon.assert_store_matches()


def test_nlink_stays_right_while_versions_are_published(daemons: Callable[..., Daemon]) -> None:
    """The intent's own link to a version being published is not a name: `st_nlink` counts
    the names only, at every instant."""
    daemon = daemons(options=["--publish-interval", "0.01"])
    daemon.start()
    a, b = daemon.mnt / "a", daemon.mnt / "b"
    a.write_bytes(b"0")
    os.link(a, b)
    seen = set()
    deadline = time.monotonic() + 4

    def rewrite() -> None:
        while time.monotonic() < deadline:
            a.write_bytes(os.urandom(100))

    writer = threading.Thread(target=rewrite)
    writer.start()
    while time.monotonic() < deadline:
        seen.add(os.lstat(b).st_nlink)
    writer.join()
    assert seen == {2}, f"st_nlink seen: {sorted(seen)}"
    daemon.assert_store_matches()


def test_key_verbs_keep_hard_links(tmp_path: Path, daemons: Callable[..., Daemon]) -> None:
    """`recipients add` (rewrap), `rekey` and `recipients remove` (new payloads) give every
    name of a linked file its new version: still one file, and a crash left by a mount is
    finished before they start."""
    daemon = daemons("auto")
    daemon.start()
    mnt, store = daemon.mnt, daemon.store
    (mnt / "d").mkdir()
    (mnt / "a").write_bytes(b"linked\n" * 30_000)
    os.link(mnt / "a", mnt / "d" / "b")
    os.link(mnt / "a", mnt / "c")
    (mnt / "alone").write_bytes(b"alone\n")
    (mnt / "version").write_bytes(b"new\n" * 30_000)
    daemon.stop_clean()
    links = store / META / "links"  # a publish of a, d/b, c cut before its first name
    links.mkdir(exist_ok=True)
    os.rename(store / "version.age", links / "cut.age")
    names = [["", "a.age", ".cagefs-link-1"], ["d", "b.age", ".cagefs-link-2"]]
    (links / "cut.json").write_text(json.dumps({"names": [*names, ["", "c.age", ".t3"]]}))
    colleague = tmp_path / "colleague.txt"
    proc = cagefs("keygen", "-o", colleague)
    recipient = proc.stderr.split("Public key: ")[-1].strip()
    verbs = {"add": ["recipients", "add", store, recipient], "rekey": ["rekey", store]}
    verbs["remove"] = ["recipients", "remove", store, recipient]
    for name, verb in verbs.items():
        done = cagefs(*verb, "-i", daemon.identity)
        assert done.returncode == 0, f"{name}: {done.stderr}"
        assert_backing_linked(daemon, ["a", "d/b", "c"], b"new\n" * 30_000)
        if name == "add":
            assert decrypt_backing(store / "d" / "b.age", colleague) == b"new\n" * 30_000
        assert not os.listdir(store / META / "links") and not list(store.rglob(".cagefs-link-*"))
    daemon.start()
    assert os.stat(mnt / "c").st_nlink == 3
    daemon.assert_store_matches()
