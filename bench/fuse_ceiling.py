"""The ceiling pyfuse3 itself puts on sequential writes here: a filesystem that does nothing.

A one-file pyfuse3 filesystem on trio swallows every write (no encryption, no disk) and answers
reads with zeros. `dd bs=1M` through it measures what the kernel, libfuse and pyfuse3 cost per
byte, which bounds any pyfuse3 filesystem, cagefs included, on this machine. It is mounted
twice: once with every write through the page cache, once giving write-only creates direct
I/O, as cagefs does (cagefs/fs/directio.py). Printed table to
`<results-dir>/fuse-ceiling-latest.txt`, numbers and command line to
`<results-dir>/fuse-ceiling-<date>.json`.
"""

import argparse
import contextlib
import datetime
import errno
import json
import os
import shlex
import stat
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from bench.harness import MB, MIB, RESULTS_DIR


def serve(mountpoint: str, direct: bool) -> None:
    """The null filesystem (runs in its own process): one file, any name, contents discarded."""
    import pyfuse3
    import trio

    class Null(pyfuse3.Operations):
        def __init__(self) -> None:
            super().__init__()
            self.name: bytes | None = None
            self.size = 0

        def attrs(self, ino: int) -> pyfuse3.EntryAttributes:
            entry = pyfuse3.EntryAttributes()
            entry.st_ino = ino
            entry.st_mode = stat.S_IFDIR | 0o755 if ino == 1 else stat.S_IFREG | 0o644
            entry.st_size = 0 if ino == 1 else self.size
            entry.attr_timeout = entry.entry_timeout = 1.0
            return entry

        async def getattr(self, inode: int, ctx: object = None) -> pyfuse3.EntryAttributes:
            return self.attrs(inode)

        async def lookup(self, parent: int, name: bytes, ctx: object) -> pyfuse3.EntryAttributes:
            if name != self.name:
                raise pyfuse3.FUSEError(errno.ENOENT)
            return self.attrs(2)

        async def create(
            self, parent: int, name: bytes, mode: int, flags: int, ctx: object
        ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
            self.name, self.size = name, 0
            write_only = flags & os.O_ACCMODE == os.O_WRONLY
            return pyfuse3.FileInfo(fh=2, direct_io=direct and write_only), self.attrs(2)

        async def open(self, inode: int, flags: int, ctx: object) -> pyfuse3.FileInfo:
            return pyfuse3.FileInfo(fh=2)

        async def setattr(
            self,
            inode: int,
            attr: pyfuse3.EntryAttributes,
            fields: pyfuse3.SetattrFields,
            fh: int | None,
            ctx: object,
        ) -> pyfuse3.EntryAttributes:
            if fields.update_size:
                self.size = attr.st_size
            return self.attrs(inode)

        async def write(self, fh: int, off: int, buf: bytes) -> int:
            self.size = max(self.size, off + len(buf))
            return len(buf)

        async def read(self, fh: int, off: int, size: int) -> bytes:
            return bytes(max(0, min(size, self.size - off)))

        async def unlink(self, parent: int, name: bytes, ctx: object) -> None:
            self.name, self.size = None, 0

        async def flush(self, fh: int) -> None:
            pass

        async def release(self, fh: int) -> None:
            pass

        async def fsync(self, fh: int, datasync: bool) -> None:
            pass

    pyfuse3.init(Null(), mountpoint, set(pyfuse3.default_options))
    try:
        trio.run(pyfuse3.main)
    finally:
        pyfuse3.close()


@contextlib.contextmanager
def null_mount(parent: Path, direct: bool) -> Iterator[Path]:
    mnt = Path(tempfile.mkdtemp(prefix="fuse-ceiling-", dir=parent))
    serve_args = ["--serve", str(mnt), *(["--direct"] if direct else [])]
    proc = subprocess.Popen([sys.executable, "-m", "bench.fuse_ceiling", *serve_args])
    try:
        deadline = time.monotonic() + 30
        while not os.path.ismount(mnt):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the null filesystem did not mount")
            time.sleep(0.05)
        yield mnt
    finally:
        subprocess.run(["fusermount3", "-u", str(mnt)], capture_output=True, check=False)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            subprocess.run(["fusermount3", "-u", "-z", str(mnt)], capture_output=True, check=False)
        mnt.rmdir()


def dd_seconds(*operands: str) -> float:
    start = time.perf_counter()
    subprocess.run(["dd", *operands, "bs=1M"], capture_output=True, check=True)
    return time.perf_counter() - start


def measure(args: argparse.Namespace, direct: bool) -> tuple[list[float], list[float]]:
    """MB/s of `repeat` writes (dd conv=fsync) and reads of a `size_mib` file on a null mount."""
    writes, reads = [], []
    size = args.size_mib * MIB
    with null_mount(args.dir, direct) as mnt:
        big = mnt / "big"
        for _ in range(args.repeat):
            write = dd_seconds("if=/dev/zero", f"of={big}", f"count={args.size_mib}", "conv=fsync")
            writes.append(size / MB / write)
            reads.append(size / MB / dd_seconds(f"if={big}", "of=/dev/null"))
            big.unlink()
    return writes, reads


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--serve", metavar="MOUNTPOINT", help=argparse.SUPPRESS)
    parser.add_argument("--direct", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--size-mib", type=int, default=2048)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=Path("/var/tmp"))
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR)
    parser.add_argument("--quick", action="store_true", help="8 MiB, one run (a smoke test)")
    args = parser.parse_args(argv)
    if args.serve:
        serve(args.serve, args.direct)
        return 0
    if args.quick:
        args.size_mib, args.repeat = 8, 1
    results = {mode: measure(args, direct=mode == "direct") for mode in ("cached", "direct")}
    command = shlex.join([".venv/bin/python", "-m", "bench.fuse_ceiling", *(argv or sys.argv[1:])])
    table = (
        f"$ {command}\n{args.size_mib} MiB, median of {args.repeat}; {os.cpu_count()} CPUs, "
        f"load {os.getloadavg()[0]:.1f}; MB = 10^6 bytes\n\n"
        "pyfuse3 null filesystem (no crypto, no disk):\n"
    )
    for mode, (writes, reads) in results.items():
        table += (
            f"  write-only creates {mode + ':':8} write {statistics.median(writes):.0f} MB/s, "
            f"read {statistics.median(reads):.0f} MB/s\n"
        )
    print(table, end="")
    args.results_dir.mkdir(parents=True, exist_ok=True)
    (args.results_dir / "fuse-ceiling-latest.txt").write_text(table)
    stamp = datetime.date.today().isoformat()
    (args.results_dir / f"fuse-ceiling-{stamp}.json").write_text(
        json.dumps(
            {
                "command": command,
                **{f"{mode}_write_mb_s": w for mode, (w, _) in results.items()},
                **{f"{mode}_read_mb_s": r for mode, (_, r) in results.items()},
            },
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
