"""SQLite: single-row transactions on a database of ~50 MB, rollback journal then WAL.

Python's sqlite3 module, the library's default `synchronous` (FULL): every commit fsyncs.
Per target and round: create `bench.db` with one table of 1,000-byte rows filling the size
asked for, in one transaction (timed); then N transactions, each an `UPDATE` of one random row
(autocommit), with `journal_mode=DELETE`, then the same with `journal_mode=WAL`: commits/s,
and KiB written to storage per commit (`write_bytes` of the serving processes and this one).
A mode stops early once `sqlite_seconds` are spent and counts the commits done by then, so a
target that takes a second per commit still finishes. `PRAGMA quick_check` must say ok.
"""

import random
import sqlite3
import time
from pathlib import Path

from bench.harness import MIB, Metric, Mounted, Settings, Workload, bytes_written

ROW = 1000
SEED = 16

CREATE = Metric("create", "SQLite: create the database (one transaction)", "s", True)
ROLLBACK = Metric("rollback", "SQLite rollback journal: 1-row commits", "commits/s")
WAL = Metric("wal", "SQLite WAL: 1-row commits", "commits/s")
ROLLBACK_BYTES = Metric(
    "rollback.bytes", "SQLite rollback journal: KiB written to storage per commit", "KiB", True
)
WAL_BYTES = Metric("wal.bytes", "SQLite WAL: KiB written to storage per commit", "KiB", True)


def commits_per_second(
    db: sqlite3.Connection, rows: int, settings: Settings, servers: list[int]
) -> tuple[float, float]:
    """Commits/s, and KiB written to storage per commit (by the filesystem and by us)."""
    rng = random.Random(SEED)
    written = bytes_written(servers)
    done, start = 0, time.perf_counter()
    for _ in range(settings.transactions):
        db.execute("UPDATE t SET v = ? WHERE id = ?", (rng.randbytes(ROW), rng.randrange(rows)))
        done += 1
        if time.perf_counter() - start > settings.sqlite_seconds:
            break
    rate = done / (time.perf_counter() - start)
    return rate, (bytes_written(servers) - written) / done / 1024


class Sqlite(Workload):
    name = "sqlite"
    title = "SQLite"

    def measure(self, target: Mounted, settings: Settings) -> dict[Metric, float]:
        path: Path = target.path / "bench.db"
        rows = settings.sqlite_mib * MIB // ROW
        rng = random.Random(SEED)
        figures: dict[Metric, float] = {}
        db = sqlite3.connect(path, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=DELETE")
            start = time.perf_counter()
            db.execute("BEGIN")
            db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v BLOB)")
            filling = ((i, rng.randbytes(ROW)) for i in range(rows))
            db.executemany("INSERT INTO t VALUES (?, ?)", filling)
            db.execute("COMMIT")
            figures[CREATE] = time.perf_counter() - start
            figures[ROLLBACK], figures[ROLLBACK_BYTES] = commits_per_second(
                db, rows, settings, target.servers
            )
            if db.execute("PRAGMA journal_mode=WAL").fetchone()[0] != "wal":
                raise RuntimeError("SQLite would not switch to WAL")
            figures[WAL], figures[WAL_BYTES] = commits_per_second(
                db, rows, settings, target.servers
            )
            check = db.execute("PRAGMA quick_check").fetchone()[0]
            if check != "ok":
                raise RuntimeError(f"PRAGMA quick_check: {check}")
        finally:
            db.close()
        for leftover in (path, Path(f"{path}-wal"), Path(f"{path}-shm"), Path(f"{path}-journal")):
            leftover.unlink(missing_ok=True)
        return figures


WORKLOAD = Sqlite()
