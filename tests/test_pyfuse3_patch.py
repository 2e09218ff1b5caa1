"""The pyfuse3 that scripts/install.sh builds (scripts/patches/):
- pyfuse3-borrowed-write-buffers.patch: a filesystem that sets `borrow_write_buffers` is lent
  each write's data as a read-only view, released once its write() returns; one that does not
  gets bytes, as from stock pyfuse3. A one-file pyfuse3 filesystem runs in its own process,
  keeps what it is written, and reports at unmount what each write() was given.
- pyfuse3-inline-session-loop.patch: handlers that never suspend run in the receiving task;
  one that suspends still lets other requests be served meanwhile (checked with two reads
  that each wait for the other), and any pyfuse3 passes that.
- pyfuse3-conn-want.patch: a filesystem's `fuse_capabilities` are asked for or declined at
  init. Checked with auto_inval_data: a file whose content and mtime change behind the
  kernel's back is read anew after a getattr only when the filesystem keeps libfuse's
  default; one that declines it keeps being served the kernel's cached pages."""

import contextlib
import hashlib
import json
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pyfuse3
import pytest

from cagefs.fs.operations import Operations

MIB = 1 << 20

SERVER = textwrap.dedent(
    """
    import errno, hashlib, json, stat, sys
    import pyfuse3, trio

    mountpoint, report, borrow = sys.argv[1], sys.argv[2], sys.argv[3] == "borrow"

    class Keeper(pyfuse3.Operations):
        borrow_write_buffers = borrow

        def __init__(self):
            super().__init__()
            self.data = bytearray()
            self.kinds = set()
            self.writable = False
            self.earlier = None
            self.earlier_released = []

        def attrs(self, ino):
            entry = pyfuse3.EntryAttributes()
            entry.st_ino = ino
            entry.st_mode = stat.S_IFDIR | 0o755 if ino == 1 else stat.S_IFREG | 0o644
            entry.st_size = 0 if ino == 1 else len(self.data)
            return entry

        async def getattr(self, inode, ctx=None):
            return self.attrs(inode)

        async def lookup(self, parent, name, ctx):
            if name != b"f":
                raise pyfuse3.FUSEError(errno.ENOENT)
            return self.attrs(2)

        async def open(self, inode, flags, ctx):
            return pyfuse3.FileInfo(fh=2)

        async def write(self, fh, off, buf):
            if self.earlier is not None:
                try:
                    self.earlier[:1].tobytes()
                    self.earlier_released.append(False)
                except ValueError:
                    self.earlier_released.append(True)
            self.kinds.add(type(buf).__name__)
            if isinstance(buf, memoryview):
                self.writable = self.writable or not buf.readonly
                self.earlier = buf  # kept on purpose: it must be released after this returns
            self.data[off : off + len(buf)] = buf
            return len(buf)

    keeper = Keeper()
    pyfuse3.init(keeper, mountpoint, set(pyfuse3.default_options))
    try:
        trio.run(pyfuse3.main)
    finally:
        pyfuse3.close()
        with open(report, "w") as f:
            json.dump({
                "kinds": sorted(keeper.kinds),
                "writable": keeper.writable,
                "earlier_released": keeper.earlier_released,
                "sha256": hashlib.sha256(keeper.data).hexdigest(),
            }, f)
    """
)


WAITING_READS = textwrap.dedent(
    """
    import errno, stat, sys
    import pyfuse3, trio

    class Waiting(pyfuse3.Operations):
        \"\"\"Two files: a read of "first" waits until "second" is read, and a read of "second"
        waits until "first" is being read. Only a loop that serves a request while another
        one's handler is suspended gets both done.\"\"\"

        def __init__(self):
            super().__init__()
            self.first_started = trio.Event()
            self.second_read = trio.Event()

        def attrs(self, ino):
            entry = pyfuse3.EntryAttributes()
            entry.st_ino = ino
            entry.st_mode = stat.S_IFDIR | 0o755 if ino == 1 else stat.S_IFREG | 0o444
            entry.st_size = 0 if ino == 1 else 6
            return entry

        async def getattr(self, inode, ctx=None):
            return self.attrs(inode)

        async def lookup(self, parent, name, ctx):
            names = {b"first": 2, b"second": 3}
            if name not in names:
                raise pyfuse3.FUSEError(errno.ENOENT)
            return self.attrs(names[name])

        async def open(self, inode, flags, ctx):
            return pyfuse3.FileInfo(fh=inode, direct_io=True)

        async def read(self, fh, off, size):
            if off:
                return b""
            if fh == 2:
                self.first_started.set()
                await self.second_read.wait()
                return b"first\\n"
            await self.first_started.wait()
            self.second_read.set()
            return b"secnd\\n"

    pyfuse3.init(Waiting(), sys.argv[1], set(pyfuse3.default_options))
    try:
        trio.run(pyfuse3.main)
    finally:
        pyfuse3.close()
    """
)


CHANGING_BEHIND = textwrap.dedent(
    """
    import errno, stat, sys
    import pyfuse3, trio

    class ChangingBehind(pyfuse3.Operations):
        \"\"\""f" holds 8 bytes that a write to "bump" changes (and f's mtime with them)
        without the kernel knowing: only a getattr of f tells it.\"\"\"

        def __init__(self, declines):
            super().__init__()
            if declines:
                self.fuse_capabilities = {"auto_inval_data": False}
            self.generation = 0

        def attrs(self, ino):
            entry = pyfuse3.EntryAttributes()
            entry.st_ino = ino
            entry.attr_timeout = 0  # every stat asks
            if ino == 1:
                entry.st_mode = stat.S_IFDIR | 0o755
            else:
                entry.st_mode = stat.S_IFREG | 0o666
                entry.st_size = 8 if ino == 2 else 0
                entry.st_mtime_ns = 10**18 + self.generation * 10**9
            return entry

        async def getattr(self, inode, ctx=None):
            return self.attrs(inode)

        async def lookup(self, parent, name, ctx):
            names = {b"f": 2, b"bump": 3}
            if name not in names:
                raise pyfuse3.FUSEError(errno.ENOENT)
            return self.attrs(names[name])

        async def open(self, inode, flags, ctx):
            return pyfuse3.FileInfo(fh=inode, keep_cache=True)

        async def read(self, fh, off, size):
            return (b"gen %03d\\n" % self.generation)[off : off + size]

        async def write(self, fh, off, buf):
            self.generation += 1
            return len(buf)

    pyfuse3.init(ChangingBehind(sys.argv[2] == "declines"), sys.argv[1],
                 set(pyfuse3.default_options))
    try:
        trio.run(pyfuse3.main)
    finally:
        pyfuse3.close()
    """
)


@contextlib.contextmanager
def served(
    tmp_path: Path, server_source: str, *args: str
) -> Iterator[tuple[Path, subprocess.Popen]]:
    """Run `server_source` as a pyfuse3 filesystem on tmp_path/mnt (argv: the mountpoint,
    then `args`) until the block ends; then unmount it and check that it exited cleanly.
    Yields the mountpoint and the server's process."""
    mnt, script = tmp_path / "mnt", tmp_path / "server.py"
    mnt.mkdir()
    script.write_text(server_source)
    server = subprocess.Popen([sys.executable, str(script), str(mnt), *args])
    try:
        deadline = time.monotonic() + 30
        while not os.path.ismount(mnt):
            assert server.poll() is None, "the test filesystem exited"
            assert time.monotonic() < deadline, "the test filesystem did not mount"
            time.sleep(0.05)
        yield mnt, server
    finally:
        subprocess.run(["fusermount3", "-u", str(mnt)], capture_output=True, check=False)
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
            subprocess.run(["fusermount3", "-u", "-z", str(mnt)], capture_output=True, check=False)
    assert server.returncode == 0


def serve_and_write(tmp_path: Path, borrow: bool, data: bytes) -> dict:
    """Mount the one-file filesystem, write `data` into it with dd, unmount; its report."""
    report = tmp_path / "report.json"
    with served(tmp_path, SERVER, str(report), "borrow" if borrow else "copy") as (mnt, _):
        subprocess.run(
            ["dd", f"of={mnt}/f", "bs=1M", "conv=notrunc", "iflag=fullblock", "status=none"],
            input=data,
            check=True,
            timeout=60,
        )
    return json.loads(report.read_text())


def test_the_installed_pyfuse3_is_the_patched_one() -> None:
    assert getattr(pyfuse3, "BORROWED_WRITE_BUFFERS", False), (
        "scripts/install.sh did not build the patched pyfuse3: every write costs a copy more"
    )
    assert Operations.borrow_write_buffers


@pytest.mark.parametrize("borrow", [True, False], ids=["borrowed", "copied"])
def test_write_is_lent_a_read_only_view_only_when_asked(tmp_path: Path, borrow: bool) -> None:
    data = os.urandom(3 * MIB + 12345)
    report = serve_and_write(tmp_path, borrow, data)
    assert report["sha256"] == hashlib.sha256(data).hexdigest()
    if borrow:
        assert report["kinds"] == ["memoryview"]
        assert not report["writable"]
        assert report["earlier_released"] and all(report["earlier_released"])
    else:
        assert report["kinds"] == ["bytes"]


def test_the_installed_pyfuse3_has_the_inline_session_loop() -> None:
    assert getattr(pyfuse3, "INLINE_SESSION_LOOP", False), (
        "scripts/install.sh did not build the pyfuse3 with the inline session loop: every"
        " request costs a pass through trio's scheduler more"
    )


def test_a_suspended_handler_does_not_hold_up_other_requests(tmp_path: Path) -> None:
    with served(tmp_path, WAITING_READS) as (mnt, server):
        readers = [
            subprocess.Popen(["cat", str(mnt / name)], stdout=subprocess.PIPE)
            for name in ("first", "second")
        ]
        try:
            outputs = [reader.communicate(timeout=30)[0] for reader in readers]
        except subprocess.TimeoutExpired:
            outputs = []
            server.kill()  # the readers wait for answers in the kernel, unkillable till then
        finally:
            for reader in readers:
                reader.kill()
                reader.wait()
        assert outputs == [b"first\n", b"secnd\n"], "one read held up the other"


def test_the_installed_pyfuse3_lets_a_filesystem_choose_capabilities() -> None:
    assert getattr(pyfuse3, "CHOSEN_CAPABILITIES", False), (
        "scripts/install.sh did not build the pyfuse3 that declines auto_inval_data: the kernel"
        " drops a file's cached pages after every write"
    )
    assert Operations.fuse_capabilities == {"auto_inval_data": False}


@pytest.mark.parametrize("declines", [True, False], ids=["declined", "default"])
def test_a_declined_auto_inval_data_keeps_pages_across_a_new_mtime(
    tmp_path: Path, declines: bool
) -> None:
    with served(tmp_path, CHANGING_BEHIND, "declines" if declines else "default") as (mnt, _):
        f = mnt / "f"
        assert f.read_bytes() == b"gen 000\n"
        (mnt / "bump").write_bytes(b"x")
        assert f.stat().st_mtime_ns == 10**18 + 10**9  # the kernel has seen the new mtime
        assert f.read_bytes() == (b"gen 000\n" if declines else b"gen 001\n")


@pytest.mark.skipif(
    not getattr(pyfuse3, "CHOSEN_CAPABILITIES", False), reason="stock pyfuse3 would mount"
)
def test_an_unknown_capability_is_refused_before_mounting(tmp_path: Path) -> None:
    class Unknown(pyfuse3.Operations):
        fuse_capabilities: ClassVar[dict[str, bool]] = {"auto_inval_dta": False}

    with pytest.raises(ValueError, match="auto_inval_dta"):
        pyfuse3.init(Unknown(), str(tmp_path))
    assert not os.path.ismount(tmp_path)
