"""Sequential write and cold read with dd, and the crypto ceiling for the same bytes.

  write: `dd if=/dev/zero of=DIR/big bs=1M count=N conv=fsync` (timed from start to exit,
         so the open, every write, the fsync and the close);
  read:  `sync; echo 3 > /proc/sys/vm/drop_caches`, then `dd if=DIR/big of=/dev/null bs=1M`
         (cold: neither the mount's page cache nor the backing files are cached).
A fresh file is written before every read, so the read is also cold for cagefs's own cache of
decrypted chunks (it is keyed by version). Alongside, the CPU time spent per GiB by dd and the
processes serving the mount (a daemon and its sealers, or gocryptfs; `harness.cpu_seconds`) and
the bytes the target's backing directory holds per byte written.

Two references that are not mounts: the ceiling, raw ChaCha20-Poly1305 in 64 KiB chunks from
`cryptography` (no framing, no FUSE) sealing N MiB of zeros into a file with one write per 4 MiB
and an fsync, then opening it back after dropping caches; and the Go `age` CLI (`age -e -o OUT
IN` of a cached zero file plus an fsync of OUT; `age -d -o /dev/null` of it cold).
"""

import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path

from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from bench.crypto import BLOCK, raw_open, raw_seal, sealed_size
from bench.harness import (
    MB,
    MIB,
    Metric,
    Mounted,
    Settings,
    Work,
    Workload,
    cpu_seconds,
    drop_caches,
    run,
    timed,
    tree_bytes,
)
from cagefs.age.stream import CHUNK_SIZE

WRITE = Metric("write", "dd write (conv=fsync)", "MB/s")
READ = Metric("read", "dd cold read", "MB/s")
WRITE_CPU = Metric("write_cpu", "CPU per GiB written", "CPU-s", lower_is_better=True)
READ_CPU = Metric("read_cpu", "CPU per GiB read", "CPU-s", lower_is_better=True)
CHUNKS_PER_BLOCK = BLOCK // CHUNK_SIZE
STORED = Metric("stored", "backing bytes per byte written", "x", lower_is_better=True)


@contextlib.contextmanager
def cpu_per_gib(
    into: dict[Metric, float], metric: Metric, mib: int, servers: list[int], own: bool = False
) -> Iterator[None]:
    """Set `into[metric]` to the CPU seconds per GiB spent moving `mib` MiB in the block by the
    processes that did it (`harness.cpu_seconds`)."""
    start = cpu_seconds(servers, own)
    yield
    into[metric] = (cpu_seconds(servers, own) - start) * 1024 / mib


def dd_write(path: Path, mib: int) -> float:
    """MB/s of writing `mib` MiB of zeros to `path`, fsync included."""
    seconds = timed(["dd", "if=/dev/zero", f"of={path}", "bs=1M", f"count={mib}", "conv=fsync"])
    return mib * MIB / MB / seconds


def dd_read(path: Path) -> float:
    """MB/s of reading `path` (cold once the caller has dropped every cache)."""
    return path.stat().st_size / MB / timed(["dd", f"if={path}", "of=/dev/null", "bs=1M"])


def fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Sequential(Workload):
    name = "seq"
    title = "Sequential dd"
    reference_labels = {  # noqa: RUF012
        "ceiling": "crypto ceiling (raw ChaCha20-Poly1305, file)",
        "age": "age CLI -e / -d (file)",
    }

    def measure(self, target: Mounted, settings: Settings) -> dict[Metric, float]:
        mib, big = settings.seq_mib, target.path / "big"
        figures: dict[Metric, float] = {}
        with cpu_per_gib(figures, WRITE_CPU, mib, target.servers):
            figures[WRITE] = dd_write(big, mib)
        if big.stat().st_size != mib * MIB:
            raise RuntimeError(f"{big}: wrote {big.stat().st_size} bytes, not {mib * MIB}")
        drop_caches()
        with cpu_per_gib(figures, READ_CPU, mib, target.servers):
            figures[READ] = dd_read(big)
        figures[STORED] = tree_bytes(target.backing) / (mib * MIB)
        big.unlink()
        return figures

    def references(self, work: Work, settings: Settings) -> dict[str, dict[Metric, float]]:
        return {"ceiling": raw_ceiling(work, settings.seq_mib), "age": age_cli(work, settings)}


def raw_ceiling(work: Work, mib: int) -> dict[Metric, float]:
    """Raw ChaCha20-Poly1305: zeros sealed into a file and fsync'ed; opened back cold."""
    aead, sealed = ChaCha20Poly1305(os.urandom(32)), work.root / "ceiling.sealed"
    plain = memoryview(bytearray(BLOCK))
    out = memoryview(bytearray(sealed_size(BLOCK)))
    blocks = -(-mib * MIB // BLOCK)
    size = blocks * BLOCK
    mib = size // MIB
    figures: dict[Metric, float] = {}
    try:
        with cpu_per_gib(figures, WRITE_CPU, mib, [], own=True):
            start = time.perf_counter()
            with open(sealed, "wb", buffering=0) as f:
                for i in range(blocks):
                    raw_seal(aead, plain, out, i * CHUNKS_PER_BLOCK)
                    f.write(out)
                os.fsync(f.fileno())
            figures[WRITE] = size / MB / (time.perf_counter() - start)
        drop_caches()
        with cpu_per_gib(figures, READ_CPU, mib, [], own=True):
            start = time.perf_counter()
            with open(sealed, "rb", buffering=0) as f:
                for i in range(blocks):
                    f.readinto(out)
                    raw_open(aead, out, plain, i * CHUNKS_PER_BLOCK)
            figures[READ] = size / MB / (time.perf_counter() - start)
        figures[STORED] = sealed.stat().st_size / size
    finally:
        sealed.unlink(missing_ok=True)
    return figures


def age_cli(work: Work, settings: Settings) -> dict[Metric, float]:
    """`age -e` of cached zeros, file to file, fsync'ed; `age -d` of it cold to /dev/null."""
    src, out, mib = work.root / "age-plain", work.root / "age-out.age", settings.seq_mib
    run(["dd", "if=/dev/zero", f"of={src}", "bs=1M", f"count={mib}"])
    encrypt = ["age", "-e", "-r", work.recipient, "-o", str(out), str(src)]
    decrypt = ["age", "-d", "-i", str(work.identity), "-o", "/dev/null", str(out)]
    size, figures = mib * MIB, {}
    try:
        with cpu_per_gib(figures, WRITE_CPU, mib, []):
            start = time.perf_counter()
            run(encrypt)
            fsync_path(out)
            figures[WRITE] = size / MB / (time.perf_counter() - start)
        drop_caches()
        with cpu_per_gib(figures, READ_CPU, mib, []):
            figures[READ] = size / MB / timed(decrypt)
        figures[STORED] = out.stat().st_size / size
    finally:
        src.unlink(missing_ok=True)
        out.unlink(missing_ok=True)
    return figures


WORKLOAD = Sequential()
