"""fs/staging.py's Overlay over a real age file: a small write into a block not staged yet
reads nothing of the base until the rest of that block is needed, and every read, truncation
and publish still gives exactly the model's bytes."""

import errno
import os
import random
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import KeyFile, first_difference

from cagefs.age import CHUNK_SIZE, encrypt, open_file
from cagefs.fs import staging
from cagefs.fs.staging import MemoryBlocks, Overlay, PartialBudget, ScratchBlocks

BASE = 8 * CHUNK_SIZE + 1234


class Base:
    """A real age file's chunks, with the reads counted."""

    def __init__(self, tmp_path: Path, keyfile: KeyFile, data: bytes) -> None:
        path = tmp_path / "base.age"
        path.write_bytes(encrypt(data, [keyfile.identity.recipient()]))
        self.fd = os.open(path, os.O_RDONLY)
        self.reader = open_file(self.fd, [keyfile.identity]).reader
        self.reads = 0

    def read_chunk(self, index: int) -> bytes:
        self.reads += 1
        return self.reader.read_chunk(index)


@pytest.fixture
def base(tmp_path: Path, keyfile: KeyFile) -> Iterator[tuple[Base, bytes]]:
    data = random.Random(5).randbytes(BASE)
    opened = Base(tmp_path, keyfile, data)
    yield opened, data
    os.close(opened.fd)


def test_a_small_write_and_its_record_read_no_base_block(base: tuple[Base, bytes]) -> None:
    opened, data = base
    overlay = Overlay(MemoryBlocks(), BASE, opened.read_chunk)
    model = bytearray(data)
    for index in (1, 3, 6):
        offset = index * CHUNK_SIZE + 4096
        overlay.write(offset, b"x" * 4096)
        model[offset : offset + 4096] = b"x" * 4096
        assert overlay.read(offset, 4096) == b"x" * 4096  # the record's bytes
    across = 2 * CHUNK_SIZE - 100  # a write across a block boundary
    overlay.write(across, b"y" * 200)
    model[across : across + 200] = b"y" * 200
    assert overlay.read(across, 200) == b"y" * 200
    assert opened.reads == 0, f"{opened.reads} base blocks decrypted for small writes"
    assert overlay.read(CHUNK_SIZE, 8192) == model[CHUNK_SIZE : CHUNK_SIZE + 8192]
    assert opened.reads == 1  # the block's unwritten bytes: now it is completed, once
    assert overlay.read(CHUNK_SIZE, CHUNK_SIZE) == model[CHUNK_SIZE : 2 * CHUNK_SIZE]
    assert opened.reads == 1
    assert b"".join(overlay.chunks()) == model


class CountedBlocks(MemoryBlocks):
    """RAM blocks, with the blocks stored counted (each costs a 64 KiB encryption in a
    scratch file)."""

    def __init__(self) -> None:
        super().__init__()
        self.puts = 0
        self.bytes_put = 0

    def put(self, index: int, block: bytes) -> None:
        self.puts += 1
        self.bytes_put += len(block)
        super().put(index, block)


def test_lines_appended_past_the_base_store_a_block_only_once_it_is_full(
    base: tuple[Base, bytes],
) -> None:
    """A log that appends a line and fsyncs: every line's record is read back from RAM, and
    a block past the base's end is stored once, when full, not at every line."""
    opened, data = base
    blocks = CountedBlocks()
    overlay = Overlay(blocks, BASE, opened.read_chunk)
    model = bytearray(data)
    line = b"%08d 2026-12-01T00:00:00Z something happened and was logged\n"
    for i in range(3000):
        offset = len(model)
        overlay.write(offset, line % i)
        model += line % i
        assert overlay.read(offset, len(line % i)) == line % i  # the record's bytes
    past = -(-len(data) // CHUNK_SIZE)  # blocks past the base's last one
    full = len(model) // CHUNK_SIZE - past
    assert blocks.puts == full, f"{blocks.puts} blocks stored for {full} filled by appends"
    assert opened.reads == 0, f"{opened.reads} base blocks decrypted for appends"
    got = b"".join(overlay.chunks())
    assert got == model, f"content differs at byte {first_difference(got, model)}"
    overlay.close()


def test_blocks_written_in_part_are_stored_as_the_bytes_written(
    base: tuple[Base, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past PARTIAL_LIMIT, a block with one 4 KiB write is stored as those 4 KiB (encrypted
    into scratch: 4 KiB, not 64), and a second write into it as both."""
    monkeypatch.setattr(staging, "PARTIAL_LIMIT", 1)
    opened, data = base
    blocks = CountedBlocks()
    overlay = Overlay(blocks, BASE, opened.read_chunk)
    model = bytearray(data)
    for offset in (4096, CHUNK_SIZE + 8192, 4096 + 3 * 4096, 2 * CHUNK_SIZE):
        overlay.write(offset, b"p" * 4096)
        model[offset : offset + 4096] = b"p" * 4096
    # Block 0 stored (4 KiB), written again (8 KiB); block 1 stored (4 KiB).
    assert (blocks.puts, blocks.bytes_put) == (3, 4 * 4096), (blocks.puts, blocks.bytes_put)
    assert overlay.read(4096, 4 * 4096) == model[4096 : 5 * 4096]
    assert opened.reads == 1  # the unwritten bytes between the two writes: base block 0
    got = b"".join(overlay.chunks())
    assert got == model, f"content differs at byte {first_difference(got, model)}"
    overlay.close()


@pytest.mark.parametrize("scratch", [False, True])
def test_small_writes_into_more_blocks_than_ram_keeps_read_no_base_block(
    base: tuple[Base, bytes], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, scratch: bool
) -> None:
    """fio's 4 KiB random writes + fsync all over a large file: past PARTIAL_LIMIT blocks
    written in part, the oldest are stored as written, not completed from the base."""
    monkeypatch.setattr(staging, "PARTIAL_LIMIT", 2)
    opened, data = base
    (tmp_path / ".cagefs" / "tmp").mkdir(parents=True)
    blocks = ScratchBlocks(tmp_path) if scratch else MemoryBlocks()
    overlay = Overlay(blocks, BASE, opened.read_chunk)
    model = bytearray(data)
    for round_ in range(3):  # the second and third write into blocks stored in part
        for index in range(8):
            offset = index * CHUNK_SIZE + (round_ * 3 + index) % 15 * 4096
            piece = bytes([round_ + 1]) * 4096
            overlay.write(offset, piece)
            model[offset : offset + 4096] = piece
            assert overlay.read(offset, 4096) == piece  # the record's bytes
    assert opened.reads == 0, f"{opened.reads} base blocks decrypted for small writes"
    got = b"".join(overlay.chunks())
    assert got == model, f"content differs at byte {first_difference(got, model)}"
    assert opened.reads == -(-BASE // CHUNK_SIZE)  # each block's base once, at publishing
    overlay.close()


@pytest.mark.parametrize("scratch", [False, True])
def test_partial_blocks_follow_the_model_through_writes_truncations_and_reads(
    base: tuple[Base, bytes], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, scratch: bool
) -> None:
    monkeypatch.setattr(staging, "PARTIAL_LIMIT", 3)  # the oldest completed often
    opened, data = base
    (tmp_path / ".cagefs" / "tmp").mkdir(parents=True)
    blocks = ScratchBlocks(tmp_path) if scratch else MemoryBlocks()
    overlay = Overlay(blocks, BASE, opened.read_chunk)
    model = bytearray(data)
    rng = random.Random(int(scratch))
    for step in range(600):
        kind = rng.random()
        if kind < 0.6:
            offset = rng.randrange(0, 10 * CHUNK_SIZE)
            piece = rng.randbytes(rng.choice([1, 100, 4096, 30000, CHUNK_SIZE]))
            overlay.write(offset, piece)
            model.extend(bytes(max(0, offset + len(piece) - len(model))))
            model[offset : offset + len(piece)] = piece
        elif kind < 0.68:
            size = rng.randrange(0, 10 * CHUNK_SIZE)
            overlay.truncate(size)
            del model[size:]
            model.extend(bytes(size - len(model)))
        else:
            offset = rng.randrange(0, 10 * CHUNK_SIZE)
            length = rng.randrange(1, 3 * CHUNK_SIZE)
            got = overlay.read(offset, length)
            assert got == model[offset : offset + length], f"step {step}: read at {offset}"
        assert overlay.size == len(model), f"step {step}: size"
    got = b"".join(overlay.chunks())
    assert got == model, f"content differs at byte {first_difference(got, model)}"
    overlay.close()


def test_blocks_written_in_part_are_bounded_over_all_files_of_a_mount(
    base: tuple[Base, bytes], tmp_path: Path
) -> None:
    """Three files share a budget of 5 blocks written in part (each file's own limit, 64, is
    never reached): RAM never holds more; a file that holds none while the others hold them
    all stores the block it writes at once; every file still reads and publishes the model's
    bytes, with no base block read for its small writes; closing gives the budget back."""
    opened, data = base
    (tmp_path / ".cagefs" / "tmp").mkdir(parents=True)
    budget = PartialBudget(5)
    files = [
        Overlay(ScratchBlocks(tmp_path) if n else MemoryBlocks(), BASE, opened.read_chunk, budget)
        for n in range(3)
    ]
    models = [bytearray(data) for _ in files]
    for index in range(5):  # the first file takes the whole budget
        files[0].write(index * CHUNK_SIZE + 100, b"a" * 512)
        models[0][index * CHUNK_SIZE + 100 : index * CHUNK_SIZE + 612] = b"a" * 512
    files[1].write(CHUNK_SIZE + 4096, b"b" * 4096)  # holds none: stored at once
    models[1][CHUNK_SIZE + 4096 : CHUNK_SIZE + 8192] = b"b" * 4096
    assert budget.held == 5 and files[1].blocks.get(1) == b"b" * 4096, budget.held
    rng = random.Random(7)
    for step in range(300):
        n = rng.randrange(3)
        offset = rng.randrange(0, BASE - 4096) // 512 * 512
        piece = rng.randbytes(rng.choice([512, 4096]))
        files[n].write(offset, piece)
        models[n][offset : offset + len(piece)] = piece
        assert budget.held <= budget.limit, f"step {step}: {budget.held} blocks in RAM"
        assert files[n].read(offset, len(piece)) == piece, f"step {step}: file {n}"
    assert opened.reads == 0, f"{opened.reads} base blocks decrypted for small writes"
    for n, (overlay, model) in enumerate(zip(files, models, strict=True)):
        got = b"".join(overlay.chunks())
        assert got == model, f"file {n} differs at byte {first_difference(got, model)}"
        overlay.close()
    assert budget.held == 0, f"{budget.held} blocks still counted after every file closed"


class FullDisk(MemoryBlocks):
    """Blocks whose store fails as a full disk does (ScratchBlocks raises at its write)."""

    def put(self, index: int, block: bytes) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")


def test_a_full_disk_when_the_budget_sends_a_write_to_its_store_changes_nothing(
    base: tuple[Base, bytes],
) -> None:
    """Another file holds the whole budget, so this write is stored as written at once; the
    store fails: the write fails with ENOSPC and the file reads as before, nothing counted."""
    opened, data = base
    budget = PartialBudget(1)
    holder = Overlay(MemoryBlocks(), BASE, opened.read_chunk, budget)
    holder.write(100, b"h" * 512)
    overlay = Overlay(FullDisk(), BASE, opened.read_chunk, budget)
    with pytest.raises(OSError) as failed:
        overlay.write(CHUNK_SIZE + 4096, b"x" * 4096)
    assert failed.value.errno == errno.ENOSPC
    got = overlay.read(CHUNK_SIZE, CHUNK_SIZE)
    want = data[CHUNK_SIZE : 2 * CHUNK_SIZE]
    assert got == want, f"differs at byte {first_difference(got, want)}"
    assert not overlay.unrecorded and budget.held == 1, (overlay.unrecorded, budget.held)
    holder.close()
    overlay.close()
    assert budget.held == 0
