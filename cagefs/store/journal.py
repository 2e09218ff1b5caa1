"""The change journal: a small change made durable without a whole new version (DESIGN I3).

An fsync of a small change to a large published file writes a *record* instead of re-encrypting
the file: a standard age file `.cagefs/journal/BASE-SEQ.age`, encrypted to the store's
recipients under a fresh file key (I1, I2) and carrying a proof of origin of kind `journal`
(store/auth.py). Its plaintext (docs/JOURNAL.md) is

    cagefs-journal v2\\n
    {"path": ..., "base": ..., "seq": ..., "size": ..., "cut": ..., "ranges": ...}\\n
    the changed bytes, range after range (`ranges`: [offset, length] pairs, increasing)

(one JSON line). A record of the previous format, v1 (whole 64 KiB blocks, `blocks`), is still
read: its blocks are ranges.

`base` is the proof TAG of the exact published version the record applies to (unique per
version: every version has a fresh file key), and BASE in the name is its first 16 bytes in
hex. A record is written to a temp in `.cagefs/tmp/`, fsync'ed, renamed into the journal and
the journal directory fsync'ed: a torn temp is never a record, and a crash leaves a file as its
base plus its complete records, in order.

The durable state of a file is its published version plus the records naming that version.
`recover` (at mount, `cagefs compact`) folds them into a new version and publishes it (I3),
then removes them; records whose base is no longer at any path they name are obsolete (the
file was compacted, replaced or deleted since) and are removed. A damaged record (bad proof,
truncated, a gap in the sequence) stops recovery with one line naming it: never dropped.
"""

import contextlib
import json
import os
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from cagefs.age import (
    CHUNK_SIZE,
    PayloadReader,
    PayloadWriter,
    open_file,
    read_header_at,
    start_file,
)
from cagefs.age.encoding import b64decode, b64encode
from cagefs.age.errors import AgeError
from cagefs.age.header import Header, Stanza
from cagefs.age.recipients import Identity, Recipient
from cagefs.errors import CageError, ExitCode
from cagefs.store import links, slots
from cagefs.store.auth import STANZA_TYPE, AuthKey, FileAuth, Kind, Proof
from cagefs.store.layout import JOURNAL_DIR, SUFFIX, TEMP_PREFIX, tmp_dir
from cagefs.store.links import LinkIndex, put_in_place
from cagefs.store.paths import StoreDirs, fsync_dirs, open_listing
from cagefs.store.paths import open_file as open_backing
from cagefs.store.rewrap import keep_attributes, write_version
from cagefs.store.sealer import SealerPool
from cagefs.store.slots import SlotPool, has_zero_sector, holds_record, is_slot, payload_room
from cagefs.store.versions import write_all

if TYPE_CHECKING:
    from cagefs.store import Store

MAGIC = b"cagefs-journal v2\n"
MAGIC_V1 = b"cagefs-journal v1\n"  # whole 64 KiB blocks (`blocks`): read, never written
_FAMILY = b"cagefs-journal "
_NAME = re.compile(r"([0-9a-f]{32})-([0-9]{10})\.age")
_ENCODER = json.JSONEncoder(separators=(",", ":"))  # (json.dumps makes one per call)
_HEADER_LIMIT = 16 * 1024 * 1024  # a record's JSON line: at most ~1M ranges
RANGE_COST = 24  # a range's bytes in a record's JSON line, about: counted as change
MAX_RANGES = 200_000  # a record's JSON line stays under 5 MiB, well within _HEADER_LIMIT
# Which changes get a record rather than a new version (fs/content.py asks `wants_record`).
RECORD_MIN_FILE = 1024 * 1024  # smaller files: a record only for an fsync (see wants_record)
RECORD_MAX_SHARE = 4  # a change up to 1/4 of the file
# Records of one file past the file's own size, but at least RECORDS_LIMIT and at most
# RECORDS_CAP: its next change publishes it whole (folding them). A fold costs the file's size
# whatever the records, so they may grow as large before it; the cap bounds what recovery reads
# of one file (all its records) and the disk they take.
RECORDS_LIMIT = 64 * 1024 * 1024
RECORDS_CAP = 256 * 1024 * 1024


class JournalDamage(CageError):
    """A record that cannot be trusted or read: recovery stops rather than drop changes."""

    exit_code = ExitCode.DAMAGE


@dataclass
class Record:
    """A record's header: what it applies to and what the file is after it."""

    path: str  # the file's plaintext path in the store (its backing file is path + ".age")
    base: bytes  # the proof TAG of the published version it applies to
    seq: int  # 1, 2, ... for one base
    size: int  # the file's size after this record
    cut: int  # the smallest size the file had since the previous record (truncation)
    mode: int
    uid: int
    gid: int
    atime_ns: int
    mtime_ns: int
    ranges: list[tuple[int, int]] = field(default_factory=list)  # (offset, length), increasing
    pad: int = 0  # zero bytes after the ranges, filling a slot (store/slots.py); 0: omitted

    def encode(self, trailing: int = 0) -> bytes:
        return self._head(self._line(), self.pad, trailing)

    def _line(self) -> str:
        """The JSON object but for `pad` (the last field: added by `_head`)."""
        fields = vars(self) | {"base": b64encode(self.base)}  # (asdict: a deep copy)
        del fields["pad"]
        return _ENCODER.encode(fields)

    @staticmethod
    def _head(line: str, pad: int, trailing: int) -> bytes:
        if pad:
            line = f'{line[:-1]},"pad":{pad}}}'
        return MAGIC + (line + " " * trailing).encode() + b"\n"

    def data_length(self) -> int:
        return sum(length for _, length in self.ranges)

    def padded_to(self, length: int) -> bytes | None:
        """Set `pad` so that the record's plaintext is `length` bytes; its head, or None if
        it does not fit. (A pad that gains a digit can shorten itself: a trailing space in
        the JSON line absorbs that.) The JSON is encoded once, the pad's digits counted:
        this runs at every fsync."""
        data = self.data_length()
        line = self._line()
        room = length - data - len(self._head(line, 0, 0))  # for the pad field and a space
        padded = room - len(',"pad":')
        for trailing in (0, 1):
            if room == trailing:
                self.pad = 0  # (no pad at all: the field is left out)
                return self._head(line, 0, trailing)
            for digits in range(1, 20):
                pad = padded - digits - trailing
                if pad >= 1 and len(str(pad)) == digits:
                    self.pad = pad
                    return self._head(line, pad, trailing)
        self.pad = 0
        return None


def version_tag(header: Header) -> bytes | None:
    """The proof TAG that names a version (None for an untagged file: it gets no records)."""
    proofs = [s for s in header.stanzas if s.type == STANZA_TYPE]
    return proofs[0].body if len(proofs) == 1 else None


def base_id(tag: bytes) -> str:
    return tag[:16].hex()


def record_name(base: bytes, seq: int) -> str:
    return f"{base_id(base)}-{seq:010d}{SUFFIX}"


def wants_record(
    size: int, written: int, ranges: int, recorded: int, fsync: bool = False
) -> bool:
    """Whether `written` bytes in `ranges` ranges of a file of `size` (with `recorded` bytes
    of records already) are worth a record rather than a whole new version; `fsync`: one
    waits for it. (Many scattered ranges are published whole: a record's JSON line holds at
    most MAX_RANGES, well within what a reader takes.)

    A file under RECORD_MIN_FILE gets one only for an fsync: the record is made durable in
    place of a version's temp, fsync, rename and directory fsync (a SQLite `-journal` or a
    young `-wal` is fsync'ed at every commit), while a close is cheaper published with its
    group than recorded at once."""
    change = written + RANGE_COST * ranges
    if ranges > MAX_RANGES or recorded + change > records_limit(size):
        return False
    if size < RECORD_MIN_FILE:
        return fsync
    return change <= size // RECORD_MAX_SHARE


def records_limit(size: int) -> int:
    """How many bytes of records a file of `size` may have before it is published whole."""
    return min(max(size, RECORDS_LIMIT), RECORDS_CAP)


class Journal:
    """A mount's writer and remover of records: into free slots (store/slots.py) when one
    fits, else as record files."""

    def __init__(
        self, root: Path, recipients: Sequence[Recipient], key: AuthKey,
        slots_limit: int = slots.POOL_LIMIT,
    ) -> None:
        self.root = root
        self._recipients = recipients
        self._key = key
        directory = root / JOURNAL_DIR
        directory.mkdir(mode=0o700, exist_ok=True)
        self._dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        self.slots = SlotPool(self._dir_fd, recipients, self._tag, slots_limit)

    def close(self) -> None:
        self.slots.close()
        os.close(self._dir_fd)

    def write(self, record: Record, data: Iterable[bytes]) -> int:
        """Make `record` durable with the bytes of its ranges (`data`: one piece per range);
        returns the bytes it took.

        On failure (ENOSPC) no record is left and the error is raised: nothing is lost, the
        caller still holds the changes.
        """
        length = len(record.encode()) + record.data_length()
        slot = self.slots.take(length)
        if slot is not None:
            name, size = slot
            file_key, header = self.slots.header()
            room = payload_room(size, len(header))
            head = record.padded_to(room) if room is not None else None
            if head is not None:
                self._write_slot(name, header, file_key, head, record, data)
                return size
            self.slots.give_back(name)  # (a JSON line at a digit's edge: rare)
        return self._write_file(record, data)

    def _write_slot(
        self, name: str, header: bytes, file_key: bytes, head: bytes, record: Record,
        data: Iterable[bytes],
    ) -> None:
        """The record over a free slot: one write, one fdatasync (the slot's zeros are
        durable: a crash leaves zeros and new bytes, which recovery tells for torn)."""
        try:
            out = bytearray(header)
            writer = PayloadWriter(out.extend, file_key)
            writer.write(head)
            self._write_ranges(writer, record, data)
            writer.write(bytes(record.pad))
            writer.close()
            fd = os.open(name, os.O_WRONLY | os.O_CLOEXEC, dir_fd=self._dir_fd)
            try:
                view = memoryview(out)
                while view:
                    view = view[os.pwrite(fd, view, len(out) - len(view)) :]
                os.fdatasync(fd)
            finally:
                os.close(fd)
        except BaseException:
            self.slots.spoiled(name)
            raise
        self.slots.holds(name, record.base)

    def _write_file(self, record: Record, data: Iterable[bytes]) -> int:
        """The record as a new file: temp, fsync, rename, directory fsync."""
        record.pad = 0
        temp = str(tmp_dir(self.root) / f"{TEMP_PREFIX}j-{os.urandom(12).hex()}")
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            writer = start_file(lambda out: write_all(fd, out), self._recipients, self._tag)
            writer.write(record.encode())
            self._write_ranges(writer, record, data)
            writer.close()
            os.fsync(fd)
            size = os.fstat(fd).st_size
            os.rename(temp, record_name(record.base, record.seq), dst_dir_fd=self._dir_fd)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp)
            raise
        finally:
            os.close(fd)
        os.fsync(self._dir_fd)
        return size

    @staticmethod
    def _write_ranges(writer: PayloadWriter, record: Record, data: Iterable[bytes]) -> None:
        for (offset, length), piece in zip(record.ranges, data, strict=True):
            if len(piece) != length:
                raise AssertionError(f"range at {offset} has {len(piece)} bytes, not {length}")
            writer.write(piece)

    def drop(self, base: bytes) -> None:
        """Remove every record of `base` (obsolete: a newer version is durable, or the file is
        gone). Not fsync'ed: a record that comes back after a crash no longer matches. Slots
        are zeroed by the slots' thread before they are free again."""
        prefix = base_id(base) + "-"
        # Last first: stopped part-way (kill -9), what is left is still a whole sequence.
        for name in sorted(os.listdir(self._dir_fd), reverse=True):
            if name.startswith(prefix):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(name, dir_fd=self._dir_fd)
        self.slots.release(base)

    def replay(self, base: bytes, size: int, identities: Sequence[Identity]) -> "Replay":
        """The changes the records of `base` (a version of `size` bytes) hold: for a mount
        going back to them after a failed save."""
        prefix = base_id(base) + "-"
        found = [
            read_record(self._dir_fd, name, identities, self._key)
            for name in os.listdir(self._dir_fd)
            if name.startswith(prefix)
        ]
        found += [
            read_record(self._dir_fd, name, identities, self._key)
            for name in self.slots.records_of(base)
        ]
        replay = Replay(size, size)
        for record, data in sorted(found, key=lambda pair: pair[0].seq):
            replay.apply(record, data)
        return replay

    def _tag(self, file_key: bytes, stanzas: Sequence[Stanza]) -> list[Stanza]:
        return [self._key.tag(file_key, stanzas, Kind.JOURNAL)]


def read_record(
    dir_fd: int, name: str, identities: Sequence[Identity], key: AuthKey
) -> tuple[Record, list[bytes]]:
    """A record and the bytes of its ranges, or JournalDamage naming it."""
    where = f"{JOURNAL_DIR}/{name}"
    try:
        fd = open_backing(dir_fd, name)
    except OSError as exc:
        raise JournalDamage(f"journal record {where}: {exc.strerror}") from None
    try:

        def check(header: Header, file_key: bytes) -> None:
            proof = key.proof(header, file_key, Kind.JOURNAL)
            if proof is not Proof.VALID:
                raise JournalDamage(f"journal record {where}: {proof.value}")

        try:
            reader = open_file(fd, identities, check).reader
            record, data = _parse(reader)
        except (AgeError, ValueError, KeyError, TypeError) as exc:
            raise JournalDamage(f"journal record {where} is damaged: {exc}") from None
    finally:
        os.close(fd)
    if not is_slot(name) and record_name(record.base, record.seq) != name:
        raise JournalDamage(f"journal record {where} ({record.path}) is not named for its content")
    return record, data


def _parse(reader: PayloadReader) -> tuple[Record, list[bytes]]:
    head = reader.read(0, min(reader.size, len(MAGIC) + _HEADER_LIMIT))
    if not head.startswith((MAGIC, MAGIC_V1)):
        first = head[: head.find(b"\n")] if b"\n" in head[:64] else b""
        if first.startswith(_FAMILY):  # e.g. v3: written by a newer cagefs
            version = first[len(_FAMILY) :].decode(errors="replace")
            raise ValueError(f"record format {version} is not one this cagefs reads (v1, v2)")
        raise ValueError("not a cagefs journal record")
    end = head.find(b"\n", len(MAGIC))
    if end < 0:
        raise ValueError("record header too long or cut short")
    fields = json.loads(head[len(MAGIC) : end])
    fields["base"] = b64decode(fields["base"])
    if head.startswith(MAGIC_V1):
        fields["ranges"] = _v1_ranges(fields.pop("blocks"), fields["size"])
    record = Record(**fields)
    for name in ("seq", "size", "cut", "mode", "uid", "gid", "atime_ns", "mtime_ns"):
        if not isinstance(getattr(record, name), int) or getattr(record, name) < 0:
            raise ValueError(f"bad {name}")
    if not isinstance(record.path, str) or not record.path or record.seq < 1:
        raise ValueError("bad path or sequence number")
    _check_ranges(record)
    if not isinstance(record.pad, int) or record.pad < 0:
        raise ValueError("bad pad")
    offset = end + 1
    if reader.size != offset + record.data_length() + record.pad:
        raise ValueError("record is not as long as its header says")
    data = []
    for _, length in record.ranges:
        data.append(reader.read(offset, length))
        offset += length
    if reader.read(offset, record.pad).strip(b"\0"):  # (read: its chunks authenticated too)
        raise ValueError("padding is not zeros")
    return record, data


def _v1_ranges(blocks: object, size: object) -> list[tuple[int, int]]:
    """A v1 record's block indices as ranges: block i is [i * 64 KiB, min(next, size))."""
    if not isinstance(blocks, list) or not isinstance(size, int):
        raise ValueError("bad block list")
    if any(not isinstance(i, int) or i < 0 or i * CHUNK_SIZE >= size for i in blocks):
        raise ValueError("bad block list")
    return [(i * CHUNK_SIZE, min(CHUNK_SIZE, size - i * CHUNK_SIZE)) for i in blocks]


def _check_ranges(record: Record) -> None:
    """Ranges are [offset, length] pairs of ints, increasing, disjoint, within the size."""
    if not isinstance(record.ranges, list):
        raise ValueError("bad range list")
    ranges, end = [], 0
    for pair in record.ranges:
        if not isinstance(pair, (list, tuple)) or len(pair) != 2:
            raise ValueError("bad range list")
        offset, length = pair
        if not isinstance(offset, int) or not isinstance(length, int) or length <= 0:
            raise ValueError("bad range list")
        if offset < end:
            raise ValueError("ranges out of order or overlapping")
        end = offset + length
        if end > record.size:
            raise ValueError("range past the end of the file")
        ranges.append((offset, length))
    record.ranges = ranges


@dataclass
class Replay:
    """A file's changes as its records describe them, over its base version: the bytes each
    record put, by 64 KiB block, in the order they were put."""

    size: int
    base_limit: int  # base content past this was truncated away
    patches: dict[int, list[tuple[int, bytes]]] = field(default_factory=dict)  # (within, bytes)

    def apply(self, record: Record, data: Sequence[bytes]) -> None:
        self._cut(record.cut)
        for (offset, _), piece in zip(record.ranges, data, strict=True):
            view = memoryview(piece)
            while view:
                index, within = divmod(offset, CHUNK_SIZE)
                take = min(CHUNK_SIZE - within, len(view))
                self.patches.setdefault(index, []).append((within, bytes(view[:take])))
                view, offset = view[take:], offset + take
        self.size = record.size

    def _cut(self, cut: int) -> None:
        """Every byte at or past `cut` reads as zeros from now on."""
        self.base_limit = min(self.base_limit, cut)
        index, within = divmod(cut, CHUNK_SIZE)
        for gone in [i for i in self.patches if i > index or (i == index and not within)]:
            del self.patches[gone]
        if within and index in self.patches:
            kept = [(w, piece[: within - w]) for w, piece in self.patches[index] if w < within]
            self.patches[index] = kept

    def changed(self) -> list[int]:
        """The blocks some record put bytes in."""
        return sorted(self.patches)

    def block(self, index: int, read_base_chunk: Callable[[int], bytes]) -> bytes:
        """Block `index` of the result, zero-padded to a full block."""
        start = index * CHUNK_SIZE
        block = bytearray(CHUNK_SIZE)
        if start < self.base_limit:
            base = read_base_chunk(index)[: self.base_limit - start]
            block[: len(base)] = base
        for within, piece in self.patches.get(index, ()):
            block[within : within + len(piece)] = piece
        return bytes(block)

    def chunks(self, read_base_chunk: Callable[[int], bytes]) -> Iterator[bytes]:
        for index in range(-(-self.size // CHUNK_SIZE)):
            yield self.block(index, read_base_chunk)[: self.size - index * CHUNK_SIZE]


@dataclass
class Recovered:
    replayed: list[str] = field(default_factory=list)  # plaintext paths made current
    dropped: int = 0  # obsolete records removed
    torn: list[str] = field(default_factory=list)  # slots whose write a crash cut
    links_finished: int = 0  # publishes of hard-linked files a crash cut, finished first


def recover_store(store: "Store", writable: bool) -> Recovered:
    """Before a mount or offline (`cagefs compact`, a key change), under the store lock: the
    publishes of linked files a crash cut are finished (records may name such a file), then
    every file's records folded in. A mount that cannot (read-only, encrypt-only) is refused
    instead of serving files without their last fsync'ed changes."""
    done = Recovered()
    if writable:
        done.links_finished, _ = links.recover(store.root)
    if not pending_records(store.root):
        return done
    if not writable or store.auth is None or not store.identities:
        raise CageError(
            f"{store.root} holds journal records not yet folded into their files: mount it "
            f"read-write with its identity once, or run `cagefs compact {store.root}`"
        )
    sealers = SealerPool()
    try:
        folded = recover(store.root, store.identities, store.recipients, store.auth, sealers)
    finally:
        sealers.close()
    folded.links_finished = done.links_finished
    return folded


@contextlib.contextmanager
def _journal_dir(root: Path) -> Iterator[int | None]:
    """The store's journal directory, open (None if it was never made)."""
    try:
        dir_fd = os.open(root / JOURNAL_DIR, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        yield None
        return
    try:
        yield dir_fd
    finally:
        os.close(dir_fd)


def pending_records(root: Path) -> list[str]:
    """The records in the journal: record files, and slots that hold one (or its torn
    write); free slots are not records."""
    with _journal_dir(root) as dir_fd:
        if dir_fd is None:
            return []
        return sorted(
            name
            for name in os.listdir(dir_fd)
            if not is_slot(name) or holds_record(dir_fd, name)
        )


def clear_slots(root: Path) -> int:
    """Remove the free slots, once no records are left (`cagefs compact`)."""
    with _journal_dir(root) as dir_fd:
        return 0 if dir_fd is None else slots.clear(dir_fd)


def recover(
    root: Path,
    identities: Sequence[Identity],
    recipients: Sequence[Recipient],
    key: AuthKey,
    sealers: SealerPool,
) -> Recovered:
    """Fold every file's records into a new published version; remove obsolete records.

    Call under the store lock, after `links.recover`. Idempotent: a crash part-way leaves
    files either folded (their records then obsolete) or still with their base and records.
    Raises JournalDamage for a record that cannot be trusted, before anything of that file is
    changed. A torn slot (store/slots.py) is dropped; one before a later record of its
    version leaves a gap, which is damage.
    """
    done = Recovered()
    names = pending_records(root)
    if not names:
        return done
    journal_fd = os.open(root / JOURNAL_DIR, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    dirs = StoreDirs(root)
    try:
        groups = _group(journal_fd, names, identities, key, done.torn)
        index = LinkIndex(root)
        for members in groups.values():
            members.sort()
            path = _recover_file(
                dirs, journal_fd, members, identities, recipients, key, sealers, index
            )
            if path is None:
                done.dropped += len(members)
            else:
                done.replayed.append(path)
            for _, name in members:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(name, dir_fd=journal_fd)
        for name in done.torn:
            os.unlink(name, dir_fd=journal_fd)
        os.fsync(journal_fd)
    finally:
        dirs.close()
        os.close(journal_fd)
    return done


TORN = "torn"  # a slot whose write a crash cut: read_slot's answer
FREE = "free"  # a slot that holds no record


def read_slot(
    dir_fd: int, name: str, identities: Sequence[Identity], key: AuthKey
) -> tuple[Record, list[bytes]] | str:
    """What a slot holds (store/slots.py): FREE (its first sector is zeros), its record, or
    TORN (it fails to authenticate and has a sector of zeros); JournalDamage if it fails
    without one."""
    if not holds_record(dir_fd, name):
        return FREE
    try:
        return read_record(dir_fd, name, identities, key)
    except JournalDamage:
        if has_zero_sector(dir_fd, name):
            return TORN
        raise


def _group(
    journal_fd: int,
    names: list[str],
    identities: Sequence[Identity],
    key: AuthKey,
    torn: list[str],
) -> dict[str, list[tuple[int, str]]]:
    """Records by the version they apply to, as (seq, name); torn slots into `torn`."""
    groups: dict[str, list[tuple[int, str]]] = {}
    for name in names:
        match = _NAME.fullmatch(name)
        if match is not None:
            groups.setdefault(match[1], []).append((int(match[2]), name))
            continue
        if not is_slot(name):
            raise JournalDamage(f"{JOURNAL_DIR}/{name} is not a journal record: move it away")
        found = read_slot(journal_fd, name, identities, key)
        if found is TORN:
            torn.append(name)
        if not isinstance(found, tuple):
            continue
        record, _ = found
        groups.setdefault(base_id(record.base), []).append((record.seq, name))
    return groups


def _recover_file(
    dirs: StoreDirs,
    journal_fd: int,
    members: list[tuple[int, str]],
    identities: Sequence[Identity],
    recipients: Sequence[Recipient],
    key: AuthKey,
    sealers: SealerPool,
    index: LinkIndex,
) -> str | None:
    """Publish one file's base + records as a new version; its path, or None if obsolete."""
    records = [read_record(journal_fd, name, identities, key) for _, name in members]
    base = records[0][0].base
    if any(record.base != base for record, _ in records):
        raise JournalDamage(f"journal records {members[0][1]}...: not all of one version")
    found = _find_base(dirs, [record.path for record, _ in reversed(records)], base)
    if found is None:
        return None  # (a removal of obsolete records stopped part-way may have left a gap)
    if [seq for seq, _ in members] != list(range(1, len(members) + 1)):
        first_gap = next(name for i, (seq, name) in enumerate(members, 1) if seq != i)
        raise JournalDamage(f"journal record {JOURNAL_DIR}/{first_gap} follows a missing record")
    path, fd = found
    try:
        reader = open_file(fd, identities, FileAuth(key).check).reader
        replay = Replay(reader.size, reader.size)
        for record, data in records:
            replay.apply(record, data)
        last = records[-1][0]
        version = write_version(
            dirs.root, recipients, key, sealers, replay.chunks(reader.read_chunk), replay.size
        )
        st = os.fstat(fd)
    finally:
        os.close(fd)
    try:
        keep_attributes(version.fd, st)
        os.utime(version.fd, ns=(last.atime_ns, last.mtime_ns))
        os.fsync(version.fd)
        names = index.names(path + SUFFIX, st)
        if len(names) > 1:  # linked after its records were written: every name gets it
            put_in_place(dirs.root, version.path, path + SUFFIX, names)
        else:
            head, _, name = path.rpartition("/")
            with dirs.at(head) as dir_fd:
                os.rename(version.path, name + SUFFIX, dst_dir_fd=dir_fd)
                fsync_dirs([open_listing(dir_fd)])
    except BaseException:
        version.discard()
        raise
    os.close(version.fd)
    return path


def _find_base(dirs: StoreDirs, paths: list[str], base: bytes) -> tuple[str, int] | None:
    """The path (of those a file's records name, latest first) whose backing file is the
    version `base`, open; None if none is (compacted, replaced or deleted since)."""
    for path in dict.fromkeys(paths):
        head, _, name = path.rpartition("/")
        try:
            with dirs.at(head) as dir_fd:
                fd = open_backing(dir_fd, name + SUFFIX)
        except OSError:
            continue
        try:
            if version_tag(read_header_at(fd)) == base:
                return path, fd
        except AgeError:
            pass
        os.close(fd)
    return None


def check_records(
    root: Path, identities: Sequence[Identity], key: AuthKey | None
) -> Iterator[tuple[str, Record | str]]:
    """Every pending record read as recovery reads it (decrypted, authenticated, parsed), for
    `cagefs verify`: (its path relative to the store, its Record or what is wrong with it), in
    name order. Free and torn slots hold no record (recovery drops a torn one). Only reads;
    records folded away meanwhile (by a mount beside) are skipped."""
    with _journal_dir(root) as dir_fd:
        if dir_fd is None:
            return
        for name in sorted(os.listdir(dir_fd)):
            where = f"{JOURNAL_DIR}/{name}"
            checked: Record | str
            slot = is_slot(name)
            if _NAME.fullmatch(name) is None and not slot:
                checked = "not a journal record: move it away"
            elif key is None:
                checked = "cannot be authenticated: the store has no authentication key"
            else:
                try:
                    held = read_slot if slot else read_record
                    found = held(dir_fd, name, identities, key)
                    if isinstance(found, str):
                        continue  # FREE or TORN: no record (the next recovery drops a torn one)
                    checked = found[0]
                except FileNotFoundError:
                    continue
                except JournalDamage as damage:
                    if not os.path.lexists(os.path.join(root, where)):
                        continue
                    checked = str(damage).removeprefix(f"journal record {where}")
                    checked = checked.removeprefix(":").strip().removeprefix("is ")
            yield where, checked
