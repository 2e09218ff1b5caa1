"""Append one line + fsync to a large file, N times: a log that fsyncs, an mbox, a journal.

Per target and round: write a file of `append_mib` MiB (fsync'ed, closed: a published file,
not a new one), open it for appending, then N times write one 60-byte line and fsync; then
N times write 4 KiB at a random offset and fsync. Reports fsyncs/s and KiB written to storage
per fsync (`write_bytes` of the serving processes and this one). Without a change journal,
cagefs re-encrypts the whole file at every fsync.
"""

import os
import random
import time
from pathlib import Path

from bench.harness import MIB, Metric, Mounted, Settings, Workload, bytes_written

RATE = Metric("appends", "append a line + fsync to a large file", "fsyncs/s")
BYTES = Metric("append.bytes", "append + fsync: KiB written to storage per fsync", "KiB", True)
RANDOM = Metric("random4k", "4 KiB random write + fsync in the same file", "fsyncs/s")
RANDOM_BYTES = Metric(
    "random4k.bytes", "4 KiB random write + fsync: KiB written to storage per fsync", "KiB", True
)
LINE = b"%08d 2026-12-01T00:00:00Z something happened and was logged\n"


class Append(Workload):
    name = "append"
    title = "append + fsync"

    def measure(self, target: Mounted, settings: Settings) -> dict[Metric, float]:
        path = target.path / "appended.log"
        block = os.urandom(MIB)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            for _ in range(settings.append_mib):
                os.write(fd, block)
            os.fsync(fd)
        finally:
            os.close(fd)
        figures = self._fsyncs(path, os.O_APPEND, settings, target, RATE, BYTES)
        size = os.stat(path).st_size
        if size != settings.append_mib * MIB + settings.appends * len(LINE % 0):
            raise RuntimeError(f"the file has {size} bytes after the appends")
        figures |= self._fsyncs(path, 0, settings, target, RANDOM, RANDOM_BYTES)
        os.unlink(path)
        return figures

    @staticmethod
    def _fsyncs(
        path: Path, flags: int, settings: Settings, target: Mounted, rate: Metric, kib: Metric
    ) -> dict[Metric, float]:
        """`appends` times: a line appended (O_APPEND) or 4 KiB written at a random offset,
        then fsync: fsyncs/s and KiB written to storage per fsync."""
        rng = random.Random(7)
        page = os.urandom(4096)
        fd = os.open(path, os.O_WRONLY | flags)
        try:
            written = bytes_written(target.servers)
            start = time.perf_counter()
            for i in range(settings.appends):
                if flags & os.O_APPEND:
                    os.write(fd, LINE % i)
                else:
                    os.pwrite(fd, page, rng.randrange(settings.append_mib * MIB // 4096) * 4096)
                os.fsync(fd)
            seconds = time.perf_counter() - start
            written = bytes_written(target.servers) - written
        finally:
            os.close(fd)
        return {rate: settings.appends / seconds, kib: written / settings.appends / 1024}


WORKLOAD = Append()
