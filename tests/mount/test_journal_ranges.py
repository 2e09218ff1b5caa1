"""Journal records of changed byte ranges (docs/JOURNAL.md, v2), on real mounts.

A 4 KiB write + fsync records those 4 KiB (plus the JSON line), not its 64 KiB block: writes
in one record are coalesced where they touch or overlap, records overlap each other freely,
a truncation is the record's `cut`. After kill -9 every strategy shows exactly the model's
last fsync'ed state; `cagefs compact` leaves backing files Go `age -d` reads as that state; a
damaged range record refuses the mount with one line.
"""

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from .helpers import (
    Daemon,
    cagefs,
    decrypt_backing,
    opened,
    records,
    refused_for_damage,
)
from .test_journal import each_strategy, make_base, record_line

# Each step is one fsync'ed transaction: ("w", offset, data) writes, ("t", size) truncations,
# and the ranges and cut (None: the size before it) its record must carry.
Step = tuple[list[tuple], list[list[int]], int | None]
STEPS: list[Step] = [
    ([("w", 1_000_000, b"a" * 4096)], [[1_000_000, 4096]], None),
    # touching the last record's range, then touching its own first write: one range; and
    # inside an earlier record's range: a range of its own
    (
        [("w", 1_004_096, b"b" * 100), ("w", 1_004_196, b"c" * 50), ("w", 1_000_010, b"d" * 10)],
        [[1_000_010, 10], [1_004_096, 150]],
        None,
    ),
    # overlapping writes in one record, across a 64 KiB block boundary: one range
    ([("w", 65_000, b"e" * 1000), ("w", 65_500, b"f" * 1000)], [[65_000, 1500]], None),
    # truncated into a block, then extended by a write well past the cut
    ([("t", 2_000_123), ("w", 2_500_000, b"g" * 5)], [[2_500_000, 5]], 2_000_123),
    # a write across the end of the file, then a write inside the same bytes again
    ([("w", 2_499_900, b"h" * 200), ("w", 2_499_950, b"i" * 20)], [[2_499_900, 200]], None),
]


def apply(model: bytearray, ops: list[tuple]) -> None:
    for op in ops:
        if op[0] == "t":
            del model[op[1] :]
            model.extend(bytes(op[1] - len(model)))
        else:
            _, offset, data = op
            model.extend(bytes(max(0, offset + len(data) - len(model))))
            model[offset : offset + len(data)] = data


def run_steps(daemon: Daemon, model: bytearray, name: str = "f.bin") -> list[Path]:
    """Every step as one fsync'ed transaction, each checked to write exactly one record that
    holds only its ranges; returns the records."""
    written = []
    for ops, ranges, cut in STEPS:
        before = set(records(daemon.store))
        with opened(daemon.mnt / name, os.O_WRONLY) as fd:
            for op in ops:
                if op[0] == "t":
                    os.ftruncate(fd, op[1])
                else:
                    os.pwrite(fd, op[2], op[1])
            os.fsync(fd)
        previous = len(model)
        apply(model, ops)
        new = sorted(set(records(daemon.store)) - before)
        assert len(new) == 1, f"{len(new)} records for one fsync"
        line = record_line(new[0], daemon.identity)
        assert line.get("ranges") == ranges, f"ranges {line.get('ranges')}, expected {ranges}"
        expected = (len(model), previous if cut is None else cut)
        assert (line["size"], line["cut"]) == expected, "size and cut"
        changed = sum(length for _, length in ranges)
        assert new[0].stat().st_size < changed + 8192, (
            f"a record of {new[0].stat().st_size} bytes for {changed} changed bytes"
        )
        written.append(new[0])
    assert (daemon.mnt / name).read_bytes() == model
    return written


@pytest.fixture
def journaled(request: pytest.FixtureRequest, daemons: Callable[..., Daemon]) -> Daemon:
    daemon = daemons(request.param, options=["--compact-idle", "600s"])
    daemon.start()
    return daemon


@each_strategy
def test_ranges_are_recorded_and_replayed_exactly_after_kill9(journaled: Daemon) -> None:
    daemon = journaled
    model = bytearray(make_base(daemon))
    run_steps(daemon, model)
    with opened(daemon.mnt / "f.bin", os.O_WRONLY) as fd:  # not fsync'ed: may be lost
        os.pwrite(fd, b"later", 7)
    later = bytearray(model)
    later[7:12] = b"later"
    daemon.kill9()
    daemon.start()
    assert records(daemon.store) == []
    got = (daemon.mnt / "f.bin").read_bytes()
    assert got in (model, later), "not the last fsync'ed state"
    assert decrypt_backing(daemon.store / "f.bin.age", daemon.identity) == got


@pytest.mark.parametrize("journaled", ["auto"], indirect=True)
def test_cagefs_compact_leaves_range_records_folded_for_go_age(
    journaled: Daemon, identity: Path
) -> None:
    daemon = journaled
    model = bytearray(make_base(daemon))
    other = bytearray(make_base(daemon, "g.bin"))
    for record in run_steps(daemon, model):
        assert decrypt_backing(record, daemon.identity).startswith(b"cagefs-journal v2\n")
    with opened(daemon.mnt / "g.bin", os.O_WRONLY) as fd:
        os.pwrite(fd, b"other file", 3_000_000)
        os.fsync(fd)
    other[3_000_000:3_000_010] = b"other file"
    daemon.kill9()
    proc = cagefs("compact", daemon.store, "-i", identity)
    assert proc.returncode == 0, proc.stderr
    assert records(daemon.store) == []
    assert decrypt_backing(daemon.store / "f.bin.age", identity) == model
    assert decrypt_backing(daemon.store / "g.bin.age", identity) == other


@pytest.mark.parametrize("journaled", ["auto"], indirect=True)
def test_a_damaged_range_record_refuses_the_mount_with_one_line(journaled: Daemon) -> None:
    daemon = journaled
    model = bytearray(make_base(daemon))
    record = run_steps(daemon, model)[2]
    daemon.kill9()
    backing = (daemon.store / "f.bin.age").read_bytes()
    damaged = bytearray(record.read_bytes())
    damaged[len(damaged) - 100] ^= 0x01  # in the payload: no sector of zeros appears
    record.write_bytes(damaged)
    refused_for_damage(daemon, record)
    assert record.read_bytes() == damaged and (daemon.store / "f.bin.age").read_bytes() == backing
