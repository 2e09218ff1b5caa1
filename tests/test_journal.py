"""store/journal.py without a mount: records are age files, replay is exact, damage is loud."""

import json
import os
import random
import subprocess
from pathlib import Path
from typing import Any

import pyrage
import pytest
from conftest import KeyFile, first_difference

from cagefs.age import CHUNK_SIZE, start_file
from cagefs.age.encoding import b64encode
from cagefs.age.file import read_header_at
from cagefs.age.x25519 import X25519Identity
from cagefs.errors import CageError
from cagefs.store import Store, init_store
from cagefs.store.journal import (
    MAGIC,
    MAGIC_V1,
    Journal,
    JournalDamage,
    Record,
    pending_records,
    record_name,
    recover,
    recover_store,
    version_tag,
)
from cagefs.store.layout import JOURNAL_DIR
from cagefs.store.ranges import Ranges
from cagefs.store.rewrap import publish, write_version
from cagefs.store.sealer import SealerPool
from cagefs.store.slots import POOL_LIMIT, is_slot


@pytest.fixture
def store(tmp_path: Path, keyfile: KeyFile) -> Store:
    return init_store(tmp_path / "store", identities=[keyfile.identity])


def put_file(store: Store, name: str, data: bytes) -> bytes:
    """Publish `data` as file `name`; returns its version's TAG."""
    assert store.auth is not None
    version = write_version(
        store.root, store.recipients, store.auth, SealerPool(0), [data], len(data)
    )
    path = store.root / f"{name}.age"
    if not path.exists():
        path.touch(0o644)
    publish(version, store.root, f"{name}.age", os.stat(path))
    with open(path, "rb") as f:
        tag = version_tag(read_header_at(f.fileno()))
    assert tag is not None
    return tag


def in_order(store: Store, keyfile: KeyFile) -> list[str]:
    """The records in the journal (files and slots), by seq."""
    journal = store.root / JOURNAL_DIR
    names = pending_records(store.root)
    return sorted(names, key=lambda name: int(header_of(journal / name, keyfile)["seq"]))


def header_of(record: Path, keyfile: KeyFile) -> dict[str, Any]:
    """A record's JSON line, as Go `age -d` decrypts it (slots and files alike)."""
    plain = go_age_decrypt(record, keyfile)
    assert plain.startswith(MAGIC), plain[:40]
    line: dict[str, Any] = json.loads(plain[len(MAGIC) : plain.index(b"\n", len(MAGIC))])
    return line


def go_age_decrypt(path: Path, keyfile: KeyFile) -> bytes:
    proc = subprocess.run(
        ["age", "-d", "-i", str(keyfile.path), str(path)], capture_output=True, check=False
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def record_of(path: str, base: bytes, seq: int, size: int, cut: int, blocks: list[int]) -> Record:
    """A record of whole 64 KiB blocks (as ranges; the last one cut at `size`)."""
    ranges = [(i * CHUNK_SIZE, min(CHUNK_SIZE, size - i * CHUNK_SIZE)) for i in blocks]
    return ranged(path, base, seq, size, cut, ranges)


def ranged(
    path: str, base: bytes, seq: int, size: int, cut: int, ranges: list[tuple[int, int]]
) -> Record:
    return Record(path, base, seq, size, cut, 0o644, 0, 0, 1, 2_000_000_000, ranges)


def write(journal: Journal, content: bytearray, record: Record) -> None:
    journal.write(record, [bytes(content[o : o + n]) for o, n in record.ranges])


def plaintext(store: Store, keyfile: KeyFile, name: str) -> bytes:
    """The backing file as Go `age -d` reads it."""
    proc = subprocess.run(
        ["age", "-d", "-i", str(keyfile.path), str(store.root / f"{name}.age")],
        capture_output=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_records_replay_writes_truncations_and_growth_in_order(
    store: Store, keyfile: KeyFile
) -> None:
    assert store.auth is not None
    rng = random.Random(1)
    content = bytearray(rng.randbytes(5 * CHUNK_SIZE + 100))
    base = put_file(store, "f", bytes(content))
    journal = Journal(store.root, store.recipients, store.auth)
    # 1: a write in block 1; 2: truncate into block 2 then grow to 7 blocks writing block 6
    content[CHUNK_SIZE + 5 : CHUNK_SIZE + 10] = b"HELLO"
    write(journal, content, record_of("f", base, 1, len(content), len(content), [1]))
    cut = 2 * CHUNK_SIZE + 7
    del content[cut:]
    content.extend(bytes(7 * CHUNK_SIZE - len(content)))
    content[6 * CHUNK_SIZE : 6 * CHUNK_SIZE + 3] = b"END"
    write(journal, content, record_of("f", base, 2, len(content), cut, [2, 6]))
    assert len(pending_records(store.root)) == 2
    journal.close()
    done = recover(store.root, store.identities, store.recipients, store.auth, SealerPool(0))
    assert done.replayed == ["f"] and pending_records(store.root) == []
    got = plaintext(store, keyfile, "f")
    assert len(got) == len(content) and got == bytes(content)
    assert os.stat(store.root / "f.age").st_mtime_ns == 2_000_000_000


def test_records_are_age_files_with_no_plaintext(store: Store, keyfile: KeyFile) -> None:
    assert store.auth is not None
    content = bytearray(b"secret-marker " * 10_000)
    base = put_file(store, "g", bytes(content))
    journal = Journal(store.root, store.recipients, store.auth)
    write(journal, content, record_of("g", base, 1, len(content), len(content), [0]))
    (name,) = pending_records(store.root)
    data = (store.root / JOURNAL_DIR / name).read_bytes()
    assert b"secret-marker" not in data and b"cagefs-journal" not in data
    plain = pyrage.decrypt(data, [pyrage.x25519.Identity.from_str(str(keyfile.identity))])
    assert plain.startswith(MAGIC) and plain.endswith(bytes(content[:CHUNK_SIZE]))


def test_records_of_another_version_are_dropped(store: Store, keyfile: KeyFile) -> None:
    assert store.auth is not None
    old = put_file(store, "h", b"a" * 2 * CHUNK_SIZE)
    journal = Journal(store.root, store.recipients, store.auth)
    write(journal, bytearray(b"b" * 2 * CHUNK_SIZE), record_of("h", old, 1, 2 * CHUNK_SIZE, 0, [0]))
    put_file(store, "h", b"c" * 100)  # compacted (or replaced) since: the record is obsolete
    done = recover(store.root, store.identities, store.recipients, store.auth, SealerPool(0))
    assert done.replayed == [] and done.dropped == 1 and pending_records(store.root) == []
    assert plaintext(store, keyfile, "h") == b"c" * 100


@pytest.mark.parametrize("where", ["file", "slot"])
@pytest.mark.parametrize("damage", ["flip", "truncate", "gap", "foreign"])
def test_a_damaged_record_stops_recovery_naming_it(
    store: Store, keyfile: KeyFile, damage: str, where: str
) -> None:
    assert store.auth is not None
    content = bytearray(b"x" * 2 * CHUNK_SIZE)
    base = put_file(store, "k", bytes(content))
    limit = POOL_LIMIT if where == "slot" else 0
    journal = Journal(store.root, store.recipients, store.auth, limit)
    if where == "slot":
        journal.slots.prepare(CHUNK_SIZE, 2)
    for seq in (1, 2):
        write(journal, content, record_of("k", base, seq, len(content), len(content), [seq - 1]))
    journal.close()
    first, second = (store.root / JOURNAL_DIR / name for name in in_order(store, keyfile))
    assert is_slot(second.name) == (where == "slot")
    if damage == "flip":
        data = bytearray(second.read_bytes())
        data[-20] ^= 1
        second.write_bytes(data)
    elif damage == "truncate":
        second.write_bytes(second.read_bytes()[:-30])
    elif damage == "gap":
        first.unlink()
    else:  # a record made with plain age (no proof): planted, not written by the store
        plain = pyrage.decrypt(
            second.read_bytes(), [pyrage.x25519.Identity.from_str(str(keyfile.identity))]
        )
        second.write_bytes(
            pyrage.encrypt(plain, [pyrage.x25519.Recipient.from_str(keyfile.recipient)])
        )
    with pytest.raises(JournalDamage) as raised:
        recover(store.root, store.identities, store.recipients, store.auth, SealerPool(0))
    assert second.name in str(raised.value) and "\n" not in str(raised.value)
    assert second.exists()  # never dropped
    assert plaintext(store, keyfile, "k") == bytes(content)


def slot_journal(store: Store, blocks: int, count: int) -> Journal:
    """A journal with `count` free slots ready for records of `blocks` 64 KiB blocks."""
    assert store.auth is not None
    journal = Journal(store.root, store.recipients, store.auth)
    journal.slots.prepare(blocks * CHUNK_SIZE, count)
    return journal


def slots_of(store: Store) -> dict[str, bytes]:
    journal = store.root / JOURNAL_DIR
    return {p.name: p.read_bytes() for p in sorted(journal.iterdir()) if is_slot(p.name)}


@pytest.mark.parametrize("blocks", [0, 1, 2, 3, 5, 16])
def test_records_land_in_slots_that_go_age_opens(
    store: Store, keyfile: KeyFile, blocks: int
) -> None:
    assert store.auth is not None
    content = bytearray(random.Random(blocks).randbytes(17 * CHUNK_SIZE - 3))
    base = put_file(store, "s", bytes(content))
    journal = slot_journal(store, blocks, 1)
    sizes = {name: len(data) for name, data in slots_of(store).items()}
    indices = [16, *range(blocks - 1)] if blocks else []  # the short last block too
    if blocks:
        content[16 * CHUNK_SIZE : 16 * CHUNK_SIZE + 4] = b"LAST"
    write(journal, content, record_of("s", base, 1, len(content), len(content), sorted(indices)))
    (name,) = pending_records(store.root)
    assert is_slot(name), f"the record went to {name}, not a slot"
    slot = store.root / JOURNAL_DIR / name
    assert slot.stat().st_size == sizes[name], "the slot's size changed: not written in place"
    plain = go_age_decrypt(slot, keyfile)
    line = header_of(slot, keyfile)
    assert line["ranges"] == [list(r) for r in record_of("s", base, 1, len(content), 0, sorted(
        indices)).ranges] and line["pad"] > 0
    data = b"".join(bytes(content[o : o + n]) for o, n in line["ranges"])
    assert plain.endswith(data + bytes(line["pad"]))
    assert b"LAST" not in slot.read_bytes()
    journal.close()
    done = recover(store.root, store.identities, store.recipients, store.auth, SealerPool(0))
    assert done.replayed == ["s"] and pending_records(store.root) == []
    assert plaintext(store, keyfile, "s") == bytes(content)


def test_a_record_too_big_for_a_slot_is_a_file(store: Store, keyfile: KeyFile) -> None:
    assert store.auth is not None
    content = bytearray(b"b" * 40 * CHUNK_SIZE)
    base = put_file(store, "big", bytes(content))
    journal = slot_journal(store, 16, 2)
    content[:] = b"c" * len(content)
    write(journal, content, record_of("big", base, 1, len(content), len(content), list(range(17))))
    (name,) = pending_records(store.root)
    assert not is_slot(name) and header_of(store.root / JOURNAL_DIR / name, keyfile)["seq"] == 1
    journal.close()
    recover(store.root, store.identities, store.recipients, store.auth, SealerPool(0))
    assert plaintext(store, keyfile, "big") == b"c" * 17 * CHUNK_SIZE + b"b" * 23 * CHUNK_SIZE


def two_slot_records(store: Store, keyfile: KeyFile) -> tuple[bytes, bytes, bytes, Path, Path]:
    """A file: its content, after record 1 and after record 2 (both in slots), and the slots."""
    assert store.auth is not None
    before = bytearray(b"0" * 3 * CHUNK_SIZE)
    base = put_file(store, "t", bytes(before))
    journal = slot_journal(store, 1, 2)
    first = bytearray(before)
    first[10:15] = b"first"
    write(journal, first, record_of("t", base, 1, len(first), len(first), [0]))
    second = bytearray(first)
    second[CHUNK_SIZE + 10 : CHUNK_SIZE + 16] = b"second"
    write(journal, second, record_of("t", base, 2, len(second), len(second), [1]))
    journal.close()
    one, two = (store.root / JOURNAL_DIR / name for name in in_order(store, keyfile))
    assert is_slot(one.name) and is_slot(two.name)
    return bytes(before), bytes(first), bytes(second), one, two


def zero_part(path: Path, start: int, length: int) -> None:
    """As a crash leaves a slot: some sectors of the new record, some of the zeros before."""
    with open(path, "r+b") as f:
        f.seek(start)
        f.write(bytes(length))


@pytest.mark.parametrize("cut", ["head", "middle", "tail", "end"])
def test_a_torn_last_slot_record_is_dropped(store: Store, keyfile: KeyFile, cut: str) -> None:
    assert store.auth is not None
    _, first, _, one, two = two_slot_records(store, keyfile)
    size = two.stat().st_size
    start, length = {
        "head": (0, 4096), "middle": (8192, 4096), "tail": (size - 5000, 4096),
        "end": (size // 512 * 512, size % 512),  # only the last, shorter sector
    }[cut]
    assert size % 512 >= 32
    zero_part(two, start, length)
    done = recover(store.root, store.identities, store.recipients, store.auth, SealerPool(0))
    assert done.replayed == ["t"]
    assert plaintext(store, keyfile, "t") == first, "not the state of the last complete record"
    assert pending_records(store.root) == [] and not one.exists()
    if cut != "head":
        assert done.torn == [two.name] and not two.exists()
    else:  # no header: no record; the next journal finds it is not zeros, and zeroes it
        assert done.torn == [] and two.exists()
        journal = slot_journal(store, 1, len(slots_of(store)))
        assert not two.read_bytes().strip(b"\0")
        assert journal.slots.free_count() == len(slots_of(store))
        journal.close()


def test_a_torn_slot_record_before_a_later_one_is_damage(
    store: Store, keyfile: KeyFile
) -> None:
    assert store.auth is not None
    before, _, _, one, two = two_slot_records(store, keyfile)
    zero_part(one, 8192, 1024)
    with pytest.raises(JournalDamage) as raised:
        recover(store.root, store.identities, store.recipients, store.auth, SealerPool(0))
    assert two.name in str(raised.value) and "missing" in str(raised.value)
    assert one.exists() and two.exists()
    assert plaintext(store, keyfile, "t") == before


def test_a_slot_with_flipped_bytes_and_no_zero_sector_is_damage(
    store: Store, keyfile: KeyFile
) -> None:
    assert store.auth is not None
    before, _, _, _, two = two_slot_records(store, keyfile)
    data = bytearray(two.read_bytes())
    data[9000] ^= 0x10
    two.write_bytes(data)
    with pytest.raises(JournalDamage) as raised:
        recover(store.root, store.identities, store.recipients, store.auth, SealerPool(0))
    assert two.name in str(raised.value) and "\n" not in str(raised.value)
    assert two.read_bytes() == data
    assert plaintext(store, keyfile, "t") == before


def test_dropped_records_free_their_slots_as_zeros(store: Store, keyfile: KeyFile) -> None:
    assert store.auth is not None
    content = bytearray(b"z" * 2 * CHUNK_SIZE)
    base = put_file(store, "d", bytes(content))
    journal = slot_journal(store, 1, 2)
    write(journal, content, record_of("d", base, 1, len(content), len(content), [0]))
    journal.slots.settle()  # (the thread may make more meanwhile: counted once it is done)
    assert journal.slots.free_count() == len(slots_of(store)) - 1
    assert len(pending_records(store.root)) == 1
    replay = journal.replay(base, len(content), store.identities)
    assert replay.changed() == [0]
    assert replay.block(0, lambda _: b"") == bytes(content[:CHUNK_SIZE])
    journal.drop(base)
    journal.slots.settle()
    assert journal.slots.free_count() == len(slots_of(store)) and pending_records(store.root) == []
    assert all(not data.strip(b"\0") for data in slots_of(store).values())
    journal.close()
    assert slots_of(store), "free slots are kept for the next mount"


def written_bytes() -> int:
    """Bytes this process has handed to write(2) and pwrite(2) so far, every thread's."""
    fields = dict(line.split(": ") for line in Path("/proc/self/io").read_text().splitlines())
    return int(fields["wchar"])


def test_slots_are_made_and_freed_without_writing_their_zeros(
    store: Store, keyfile: KeyFile
) -> None:
    """On a filesystem with FALLOC_FL_ZERO_RANGE (the test's ext4 or xfs), slots are
    allocated as unwritten extents: an fsync'ed change then costs its record's write, not
    also a slot's worth of zeros written and fsync'ed."""
    assert store.auth is not None
    content = bytearray(b"w" * 2 * CHUNK_SIZE)
    base = put_file(store, "w", bytes(content))
    before = written_bytes()
    journal = slot_journal(store, 1, 16)
    made = slots_of(store)
    assert len(made) >= 16 and all(not data.strip(b"\0") for data in made.values())
    wrote = written_bytes() - before
    assert wrote < min(map(len, made.values())), f"{wrote} bytes written to make {len(made)} slots"
    write(journal, content, record_of("w", base, 1, len(content), len(content), [0]))
    (name,) = pending_records(store.root)
    before = written_bytes()
    journal.drop(base)
    journal.slots.settle()
    wrote = written_bytes() - before
    assert wrote < len(made[name]), f"{wrote} bytes written to zero a slot of {len(made[name])}"
    assert not (store.root / JOURNAL_DIR / name).read_bytes().strip(b"\0")
    journal.close()


def test_the_pool_grows_to_its_limit_and_no_further(store: Store, keyfile: KeyFile) -> None:
    """Its running total of slot bytes (not a sum at each wake-up) stops it at the limit,
    across a remount that finds the slots made before."""
    assert store.auth is not None
    probe = Journal(store.root, store.recipients, store.auth, slots_limit=0)
    size = probe.slots.sizes[4096]
    probe.close()
    for mount in range(2):
        journal = Journal(store.root, store.recipients, store.auth, slots_limit=3 * size + 100)
        journal.slots.prepare(4096, 10)
        assert len(slots_of(store)) == 3, f"mount {mount}: {len(slots_of(store))} slots"
        assert [journal.slots.take(4096) is not None for _ in range(4)] == [True] * 3 + [False]
        assert journal.slots.starved
        journal.close()


def test_pending_records_are_slot_records_not_free_slots(store: Store, keyfile: KeyFile) -> None:
    assert store.auth is not None
    content = bytearray(b"p" * 2 * CHUNK_SIZE)
    base = put_file(store, "p", bytes(content))
    journal = slot_journal(store, 1, 2)
    assert slots_of(store) and pending_records(store.root) == []
    assert recover_store(store, writable=False).replayed == []  # a read-only mount is fine
    write(journal, content, record_of("p", base, 1, len(content), len(content), [0]))
    journal.close()
    (name,) = pending_records(store.root)
    assert is_slot(name)
    with pytest.raises(CageError, match="cagefs compact"):
        recover_store(store, writable=False)


def test_slots_of_records_dropped_at_close_hold_none_and_are_zeroed_next_time(
    store: Store, keyfile: KeyFile
) -> None:
    assert store.auth is not None
    content = bytearray(b"u" * 2 * CHUNK_SIZE)
    base = put_file(store, "u", bytes(content))
    journal = slot_journal(store, 1, 1)
    write(journal, content, record_of("u", base, 1, len(content), len(content), [0]))
    (name,) = pending_records(store.root)
    journal.slots.close()  # (stopped first: the drop below is left to close)
    journal.drop(base)
    journal.close()
    slot = store.root / JOURNAL_DIR / name
    assert pending_records(store.root) == [] and slot.read_bytes()[512:].strip(b"\0")
    again = Journal(store.root, store.recipients, store.auth)
    again.slots.prepare(CHUNK_SIZE, len(slots_of(store)))
    assert not slot.read_bytes().strip(b"\0") and again.slots.free_count() == len(slots_of(store))
    again.close()


def test_slots_made_for_other_recipients_are_made_again(store: Store, keyfile: KeyFile) -> None:
    assert store.auth is not None
    journal = slot_journal(store, 1, 2)
    journal.close()
    old = slots_of(store)
    assert old
    recipients = [*store.recipients, X25519Identity.generate().recipient()]  # a longer header
    content = bytearray(b"r" * 2 * CHUNK_SIZE)
    base = put_file(store, "r", bytes(content))
    again = Journal(store.root, recipients, store.auth)
    assert not set(slots_of(store)) & set(old), "slots of the old header length kept"
    again.slots.prepare(CHUNK_SIZE, 2)
    write(again, content, record_of("r", base, 1, len(content), len(content), [0]))
    (name,) = pending_records(store.root)
    assert is_slot(name) and header_of(store.root / JOURNAL_DIR / name, keyfile)["pad"] > 0
    again.close()


def test_ranges_coalesce_touching_and_overlapping_writes() -> None:
    ranges = Ranges()
    for start, end in [(10, 20), (30, 40), (20, 25), (5, 11), (50, 60), (39, 52), (100, 101)]:
        ranges.add(start, end)
    assert ranges.spans() == [(5, 20), (30, 30), (100, 1)] and ranges.total() == 51
    ranges.clip(45)
    assert ranges.spans() == [(5, 20), (30, 15)]
    ranges.clip(30)
    assert ranges.spans() == [(5, 20)]


def test_range_records_replay_overlaps_and_cuts_like_the_model(
    store: Store, keyfile: KeyFile
) -> None:
    """Random overlapping ranges across records, truncations inside blocks and growth, in
    slots and record files: recovery gives exactly the model's bytes."""
    assert store.auth is not None
    rng = random.Random(14)
    model = bytearray(rng.randbytes(5 * CHUNK_SIZE + 77))
    base = put_file(store, "m", bytes(model))
    journal = slot_journal(store, 1, 4)
    for seq in range(1, 13):
        cut = len(model)
        if seq % 4 == 0:
            cut = rng.randrange(CHUNK_SIZE // 2, len(model))
            del model[cut:]
        written = Ranges()
        for _ in range(rng.randint(1, 4)):
            offset = rng.randrange(0, 6 * CHUNK_SIZE)
            data = rng.randbytes(rng.randint(1, 9000))
            model.extend(bytes(max(0, offset + len(data) - len(model))))
            model[offset : offset + len(data)] = data
            written.add(offset, offset + len(data))
        written.clip(len(model))
        write(journal, model, ranged("m", base, seq, len(model), cut, written.spans()))
    journal.close()
    assert any(is_slot(name) for name in pending_records(store.root))
    done = recover(store.root, store.identities, store.recipients, store.auth, SealerPool(0))
    assert done.replayed == ["m"]
    got = plaintext(store, keyfile, "m")
    assert got == model, f"differs from the model at byte {first_difference(got, model)}"


def test_a_v1_record_of_whole_blocks_is_still_read(store: Store, keyfile: KeyFile) -> None:
    """A record left by the previous version (`cagefs-journal v1`, `blocks`) is replayed."""
    assert store.auth is not None
    content = bytearray(random.Random(1).randbytes(3 * CHUNK_SIZE + 10))
    base = put_file(store, "old", bytes(content))
    journal = Journal(store.root, store.recipients, store.auth, slots_limit=0)
    content[CHUNK_SIZE + 3 : CHUNK_SIZE + 8] = b"HELLO"
    content[-2:] = b"!!"
    fields = vars(record_of("old", base, 1, len(content), len(content), [])) | {
        "base": b64encode(base), "blocks": [1, 3]
    }
    del fields["ranges"], fields["pad"]
    plain = MAGIC_V1 + json.dumps(fields).encode() + b"\n"
    plain += bytes(content[CHUNK_SIZE : 2 * CHUNK_SIZE]) + bytes(content[3 * CHUNK_SIZE :])
    with open(store.root / JOURNAL_DIR / record_name(base, 1), "wb") as f:
        writer = start_file(f.write, store.recipients, journal._tag)
        writer.write(plain)
        writer.close()
    journal.close()
    done = recover(store.root, store.identities, store.recipients, store.auth, SealerPool(0))
    assert done.replayed == ["old"] and plaintext(store, keyfile, "old") == bytes(content)


def test_a_record_of_an_unknown_format_version_is_refused_naming_it(
    store: Store, keyfile: KeyFile
) -> None:
    assert store.auth is not None
    content = b"v" * 2 * CHUNK_SIZE
    base = put_file(store, "new", content)
    journal = Journal(store.root, store.recipients, store.auth, slots_limit=0)
    fields = vars(record_of("new", base, 1, len(content), len(content), [])) | {
        "base": b64encode(base)
    }
    name = record_name(base, 1)
    with open(store.root / JOURNAL_DIR / name, "wb") as f:
        writer = start_file(f.write, store.recipients, journal._tag)
        writer.write(b"cagefs-journal v3\n" + json.dumps(fields).encode() + b"\n")
        writer.close()
    journal.close()
    with pytest.raises(JournalDamage) as raised:
        recover(store.root, store.identities, store.recipients, store.auth, SealerPool(0))
    message = str(raised.value)
    assert name in message and "format v3" in message and "\n" not in message, message
    assert plaintext(store, keyfile, "new") == content


def test_a_record_is_padded_to_every_length_a_pad_field_can_reach() -> None:
    """A slot's record fills it exactly: for each length, `pad` (and at most one trailing
    space) make the plaintext that long, across the pad's digit counts; only a slack of 2-8
    bytes past the bare head cannot be met (the field itself takes 8 or more)."""
    record = Record("a/b.db", bytes(32), 3, 10, 10, 0o644, 0, 0, 1, 2, [(0, 4)])
    bare = len(record.encode())
    slacks = [*range(40), *(s + d for s in (17, 108, 1009, 10010, 100011) for d in (-1, 0, 1))]
    for slack in slacks:
        length = bare + 4 + slack
        head = record.padded_to(length)
        if 2 <= slack <= 8:
            assert head is None
            continue
        assert head is not None
        assert len(head) + 4 + record.pad == length
        assert head.startswith(MAGIC) and head.endswith(b"\n")
        fields = json.loads(head[len(MAGIC) :])
        assert fields.get("pad", 0) == record.pad
        assert head == record.encode(trailing=len(head) - len(record.encode()))
