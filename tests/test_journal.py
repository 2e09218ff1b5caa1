"""store/journal.py without a mount: records are age files, replay is exact, damage is loud."""

import os
import random
import subprocess
from pathlib import Path

import pyrage
import pytest
from conftest import KeyFile

from cagefs.age import CHUNK_SIZE
from cagefs.age.file import read_header_at
from cagefs.store import Store, init_store
from cagefs.store.journal import (
    MAGIC,
    Journal,
    JournalDamage,
    Record,
    pending_records,
    recover,
    version_tag,
)
from cagefs.store.layout import JOURNAL_DIR
from cagefs.store.rewrap import publish, write_version
from cagefs.store.sealer import SealerPool


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


def record_of(path: str, base: bytes, seq: int, size: int, cut: int, blocks: list[int]) -> Record:
    return Record(path, base, seq, size, cut, 0o644, 0, 0, 1, 2_000_000_000, blocks)


def write(journal: Journal, content: bytearray, record: Record) -> None:
    journal.write(
        record,
        [
            bytes(content[i * CHUNK_SIZE : i * CHUNK_SIZE + record.block_length(i)])
            for i in record.blocks
        ],
    )


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


@pytest.mark.parametrize("damage", ["flip", "truncate", "gap", "foreign"])
def test_a_damaged_record_stops_recovery_naming_it(
    store: Store, keyfile: KeyFile, damage: str
) -> None:
    assert store.auth is not None
    content = bytearray(b"x" * 2 * CHUNK_SIZE)
    base = put_file(store, "k", bytes(content))
    journal = Journal(store.root, store.recipients, store.auth)
    for seq in (1, 2):
        write(journal, content, record_of("k", base, seq, len(content), len(content), [seq - 1]))
    first, second = sorted((store.root / JOURNAL_DIR).iterdir())
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
