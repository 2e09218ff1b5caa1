"""Append one line + fsync to a large file, N times: a log that fsyncs, an mbox, a journal.

Per target and round: write a file of `append_mib` MiB (fsync'ed, closed: a published file,
not a new one), open it for appending, then N times write one 60-byte line and fsync. Reports
fsyncs/s and KiB written to storage per fsync (`write_bytes` of the serving processes and
this one). Without a change journal, cagefs re-encrypts the whole file at every fsync.
"""

import os
import time

from bench.harness import MIB, Metric, Mounted, Settings, Workload, bytes_written

RATE = Metric("appends", "append a line + fsync to a large file", "fsyncs/s")
BYTES = Metric("append.bytes", "append + fsync: KiB written to storage per fsync", "KiB", True)
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
        fd = os.open(path, os.O_WRONLY | os.O_APPEND)
        try:
            written = bytes_written(target.servers)
            start = time.perf_counter()
            for i in range(settings.appends):
                os.write(fd, LINE % i)
                os.fsync(fd)
            seconds = time.perf_counter() - start
            written = bytes_written(target.servers) - written
        finally:
            os.close(fd)
        size = os.stat(path).st_size
        os.unlink(path)
        if size != settings.append_mib * MIB + settings.appends * len(LINE % 0):
            raise RuntimeError(f"the file has {size} bytes after the appends")
        return {RATE: settings.appends / seconds, BYTES: written / settings.appends / 1024}


WORKLOAD = Append()
