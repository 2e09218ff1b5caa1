"""Journal records written in place into preallocated slots (store/slots.py), on real mounts.

A record lands in a free slot (a file of zeros made ahead of need) with one write and one
fdatasync; the slot is then a standard age file Go `age -d` opens. After a crash: a slot
whose write was cut (zeros left in it) is dropped and the file shows its previous fsync'ed
state; a slot with changed bytes and no zero sector refuses the mount, naming it; a change too
big for any slot is a record file as before; `cagefs compact` leaves neither records nor slots.
"""

import os
import random
from collections.abc import Callable
from pathlib import Path

import pytest

from .helpers import (
    Daemon,
    DaemonExited,
    cagefs,
    decrypt_backing,
    opened,
    records,
    refused_for_damage,
)
from .test_journal import MIB, edit, make_base, record_line, slots, wait_for


@pytest.fixture
def journaled(daemons: Callable[..., Daemon]) -> Daemon:
    daemon = daemons("auto", options=["--compact-idle", "600s"])
    daemon.start()
    return daemon


def edit_until_in_slot(daemon: Daemon, data: bytearray, offset: int) -> Path:
    """Small fsync'ed edits at `offset` (kept in `data`) until one's record is in a slot
    (the first ones may be record files: slots are made once records are asked for)."""
    for i in range(100):
        before = set(records(daemon.store))
        change = b"slot edit %03d" % i
        edit(daemon.mnt / "f.bin", offset, change)
        data[offset : offset + len(change)] = change
        new = list(set(records(daemon.store)) - before)
        assert len(new) == 1, new
        if new[0].name.startswith("slot-"):
            return new[0]
        wait_for(lambda: bool(slots(daemon.store)))
    raise AssertionError("no record was written into a slot")


def test_a_record_lands_in_a_slot_that_go_age_opens(journaled: Daemon) -> None:
    daemon = journaled
    data = bytearray(make_base(daemon))
    slot = edit_until_in_slot(daemon, data, 1_500_000)
    free_sizes = {path.stat().st_size for path in slots(daemon.store) if path not in records(
        daemon.store)}
    assert slot.stat().st_size in free_sizes, "not written in place over a slot of its class"
    plain = decrypt_backing(slot, daemon.identity)
    line = record_line(slot, daemon.identity)
    assert line["path"] == "f.bin" and line["ranges"] == [[1_500_000, len(b"slot edit 000")]]
    assert plain.endswith(bytes(line["pad"])) and line["pad"] > 0
    assert b"slot edit" in plain and b"slot edit" not in slot.read_bytes()
    assert (daemon.mnt / "f.bin").read_bytes() == data
    daemon.kill9()
    daemon.start()
    assert records(daemon.store) == []
    assert (daemon.mnt / "f.bin").read_bytes() == data
    assert decrypt_backing(daemon.store / "f.bin.age", daemon.identity) == data


def torn_setup(daemon: Daemon) -> tuple[bytes, bytes, Path]:
    """The file after its last-but-one fsync and after its last, whose record is in a slot;
    the daemon killed."""
    data = bytearray(make_base(daemon))
    edit_until_in_slot(daemon, data, 100)
    previous = bytes(data)
    slot = edit_until_in_slot(daemon, data, 2 * MIB + 5)
    daemon.kill9()
    return previous, bytes(data), slot


def test_a_torn_slot_is_dropped_and_the_file_is_its_previous_fsynced_state(
    journaled: Daemon,
) -> None:
    daemon = journaled
    previous, _, slot = torn_setup(daemon)
    with open(slot, "r+b") as f:  # as a crash leaves it: some sectors new, some still zeros
        f.seek(2048)  # (a 4 KiB change's slot is about 5.5 KiB)
        f.write(bytes(1024))
    daemon.start()
    assert "dropped journal slot " + slot.name in daemon.log_text()
    assert (daemon.mnt / "f.bin").read_bytes() == previous
    assert records(daemon.store) == []


def test_a_slot_with_changed_bytes_and_no_zeros_refuses_the_mount(journaled: Daemon) -> None:
    daemon = journaled
    previous, _, slot = torn_setup(daemon)
    damaged = bytearray(slot.read_bytes())
    damaged[len(damaged) // 2] ^= 0x08
    slot.write_bytes(damaged)
    backing = (daemon.store / "f.bin.age").read_bytes()
    refused_for_damage(daemon, slot)
    assert slot.read_bytes() == damaged and (daemon.store / "f.bin.age").read_bytes() == backing
    assert previous


def test_a_change_too_big_for_a_slot_is_a_record_file(journaled: Daemon) -> None:
    daemon = journaled
    data = bytearray(make_base(daemon, size=24 * MIB))
    edit_until_in_slot(daemon, data, 0)  # slots exist, of the small class
    with open(daemon.mnt / "f.bin", "r+b") as f:
        for block in range(20):  # 20 ranges of 64 KiB: more than the largest slot holds
            change = (b"big change %d " % block) * 5000
            change = change[:65536]
            f.seek(block * 1_000_000)
            f.write(change)
            data[block * 1_000_000 : block * 1_000_000 + len(change)] = change
        f.flush()
        os.fsync(f.fileno())
    (big,) = [r for r in records(daemon.store) if len(record_line(r, daemon.identity)["ranges"])
              == 20]
    assert not big.name.startswith("slot-"), "a 20-block record in a slot"
    daemon.kill9()
    daemon.start()
    assert (daemon.mnt / "f.bin").read_bytes() == data


def test_read_only_mounts_wait_for_slot_records_not_for_free_slots(
    journaled: Daemon, daemons: Callable[..., Daemon], identity: Path, tmp_path: Path
) -> None:
    daemon = journaled
    data = bytearray(make_base(daemon))
    edit_until_in_slot(daemon, data, 77)
    daemon.stop_clean()  # folded: the slots are free again, and kept
    assert slots(daemon.store) and records(daemon.store) == []
    reader = daemons("auto", mnt=tmp_path / "ro", options=["-o", "ro"])
    reader.start()  # free slots are not pending records
    assert (reader.mnt / "f.bin").read_bytes() == data
    reader.stop_clean()
    daemon.start()
    edit_until_in_slot(daemon, data, 5000)
    daemon.kill9()
    with pytest.raises(DaemonExited) as refused:
        reader.start()
    assert "cagefs compact" in refused.value.log.strip().splitlines()[-1]
    proc = cagefs("compact", daemon.store, "-i", identity)
    assert proc.returncode == 0, proc.stderr
    assert os.listdir(daemon.store / ".cagefs" / "journal") == [], "compact left slots"
    reader.start()
    assert (reader.mnt / "f.bin").read_bytes() == data
    reader.stop_clean()


def test_when_every_slot_is_in_use_the_file_is_folded_to_free_them(
    daemons: Callable[..., Daemon],
) -> None:
    """A pool of 1 MiB holds ~190 records of a 4 KiB write: the fsync after the one that found
    no slot folds the file, and its slots are free again when that fsync returns, rather than
    every later record being a file of its own (create, rename, directory fsync: half the
    fsyncs per second) until a background round gets to it, however slow the machine."""
    daemon = daemons("auto", options=["--compact-idle", "600s", "--journal-slots-mib", "1"])
    daemon.start()
    data = bytearray(make_base(daemon))
    backing = daemon.store / "f.bin.age"
    base = backing.stat().st_ino
    rng = random.Random(2)
    with opened(daemon.mnt / "f.bin", os.O_WRONLY) as fd:
        for _ in range(600):
            offset = rng.randrange(0, len(data) - 4096)
            page = rng.randbytes(4096)
            os.pwrite(fd, page, offset)
            os.fsync(fd)
            data[offset : offset + 4096] = page
    files = [r for r in records(daemon.store) if not r.name.startswith("slot-")]
    folded = backing.stat().st_ino != base
    assert folded, "never folded: the pool ran out"
    assert len(files) <= 1, f"{len(files)} records written as files once the slots ran out"
    assert (daemon.mnt / "f.bin").read_bytes() == data
    daemon.kill9()
    daemon.start()
    assert records(daemon.store) == []
    assert (daemon.mnt / "f.bin").read_bytes() == data
