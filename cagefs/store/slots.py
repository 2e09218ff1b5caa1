"""Record slots: a journal record made durable by one in-place write and one fdatasync.

`.cagefs/journal/slot-NNNNNN.age` files are made ahead of need, off the fsync path, by a
thread of the journal: their blocks allocated as zeros without writing them (`fallocate`
FALLOC_FL_ZERO_RANGE: unwritten extents) and the directory fsync'ed; where the filesystem has
no such call, real zeros written and each slot fsync'ed. (Written zeros spare a record's
fdatasync the commit that marks its extents written, but each slot's own fsync waits for a
cache flush: on this ext4, 1-3 ms per slot made, against 0.04-0.8 ms, while the record's
pwrite + fdatasync cost about the same either way. A slot is taken per fsync'ed change until
the pool is full, so that was the larger cost.) A record (store/journal.py) is
written over a FREE slot with pwrite + fdatasync: no create, no rename, no directory fsync. A
slot holding a record is a standard age file, so its size is exactly the record's encrypted
length: slots come in a few classes (records of 0, 4 KiB, 16 KiB, 64 KiB, 256 KiB and 1 MiB of
changed bytes plus a JSON line), and
the record's plaintext is padded (its `pad` field) to fill the slot.

Torn versus damaged. A slot is written only once it holds zeros made durable, so a crash
during a record write leaves a mix of zeros and new bytes (an unwritten extent reads as zeros
until a write into it has completed). At recovery (`journal.read_slot`): a slot
whose first sector is zeros holds no record (free, or torn before its header landed); one that
authenticates is a record; one that fails and has an all-zero aligned 512-byte sector is a
TORN write of an fsync that never returned (dropped, with one line); one that fails with no
zero sector is DAMAGE (the mount is refused, naming it). Obsolete records are zeroed (and
fdatasync'ed) by the thread before their slots are free again.

Each record needs a fresh file key (I2): the thread also keeps a few ready headers (file key,
header bytes with its proof), each used once.
"""

import contextlib
import ctypes
import errno
import logging
import os
import re
import threading
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

from cagefs.age.errors import AgeError
from cagefs.age.header import Stanza, encode_header
from cagefs.age.recipients import Recipient, new_file_key, wrap_file_key
from cagefs.age.stream import payload_size, plaintext_size
from cagefs.store.paths import free_bytes
from cagefs.store.versions import start_writeback

log = logging.getLogger(__name__)
_libc = ctypes.CDLL(None, use_errno=True)
_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
_FALLOC_FL_ZERO_RANGE = 0x10

SLOT = re.compile(r"slot-([0-9]{6})\.age")
SECTOR = 512
_ZERO_SECTOR = bytes(SECTOR)
_PIECE = 1 << 20  # slots are read and zeroed this much at a time
_TAIL_MIN = 32  # zeros at a slot's end that count as its last, shorter sector
# The changed bytes a slot's record holds (0: times, a new path); a 4 KiB page write + fsync
# takes the second.
CLASSES = (0, 4096, 16384, 65536, 262144, 1048576)
HEAD_ROOM = 1024  # a slot's room for the record's magic and JSON line (more: the next class)
POOL_LIMIT = 64 * 1024 * 1024  # bytes of slot files per store, free or holding records
FREE_MARGIN = 2 * POOL_LIMIT  # no slot is made that leaves the disk less free than this
READY_HEADERS = 8
_BATCH = 8  # slots made at least in one batch (one syncfs)
_GROW_BYTES = 512 * 1024  # or as many as fit in this
_ZERO_BATCH = 64  # slots zeroed between two syncfs

# The proof stanzas of a new header, from its file key and its other stanzas (Journal._tag).
Tagger = Callable[[bytes, Sequence[Stanza]], list[Stanza]]


def capacity(data: int) -> int:
    """The plaintext bytes of a record in a slot of this class."""
    return data + HEAD_ROOM


def slot_name(number: int) -> str:
    return f"slot-{number:06d}.age"


def is_slot(name: str) -> bool:
    return SLOT.fullmatch(name) is not None


def holds_record(dir_fd: int, name: str) -> bool:
    """Whether a slot's first sector is written (a record, torn or damaged); else it holds
    none: it is free, or a write was torn before its header landed."""
    fd = os.open(name, os.O_RDONLY | os.O_CLOEXEC, dir_fd=dir_fd)
    try:
        first = os.pread(fd, SECTOR, 0)
    finally:
        os.close(fd)
    return first != bytes(len(first))


def has_zero_sector(dir_fd: int, name: str) -> bool:
    """Whether an aligned 512-byte sector of the slot is all zeros (or its last, shorter
    one, if it has 32 bytes or more): the mark of a write that was cut (ciphertext and age
    headers never have one)."""
    fd = os.open(name, os.O_RDONLY | os.O_CLOEXEC, dir_fd=dir_fd)
    try:
        for piece in _pieces(fd):
            view = memoryview(piece)
            for start in range(0, len(piece), SECTOR):
                sector = view[start : start + SECTOR]
                if len(sector) >= _TAIL_MIN and sector == _ZERO_SECTOR[: len(sector)]:
                    return True
    finally:
        os.close(fd)
    return False


def _pieces(fd: int) -> Iterator[bytes]:
    """A slot's bytes, 1 MiB (whole sectors) at a time."""
    offset = 0
    while piece := os.pread(fd, _PIECE, offset):
        yield piece
        offset += len(piece)


def _all_zero(fd: int) -> bool:
    return all(piece == bytes(len(piece)) for piece in _pieces(fd))


def _zero(fd: int, size: int) -> bool:
    """The first `size` bytes of a slot read as zeros (its size at least that): its blocks
    allocated as unwritten extents where the filesystem can (True), else written (False)."""
    if _libc.fallocate(fd, _FALLOC_FL_ZERO_RANGE, 0, size) == 0:
        return True
    err = ctypes.get_errno()
    if err not in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
        raise OSError(err, os.strerror(err))
    _write_zeros(fd, size)
    return False


def _write_zeros(fd: int, size: int) -> None:
    zeros = bytes(min(size, _PIECE))
    offset = 0
    while offset < size:
        offset += os.pwrite(fd, zeros[: size - offset], offset)


def _written_then_synced(
    dir_fd: int, names: list[str], write: Callable[[int, str], bool]
) -> None:
    """`write` each slot, then fsync each for which it returned True: the first fsync's
    commit carries the batch's metadata and data, so the others are cheap, but each still
    waits for a cache flush. (Not syncfs: it also flushed every other dirty file of the
    store's filesystem, a scratch file rewritten at each write among them, which tripled the
    bytes an append + fsync wrote.)"""
    synced = []
    for name in names:
        fd = os.open(name, os.O_RDWR | os.O_CLOEXEC, dir_fd=dir_fd)
        try:
            if write(fd, name):
                synced.append(name)
                start_writeback(fd)  # (its blocks allocated now: in the first fsync's commit)
        finally:
            os.close(fd)
    for name in synced:
        fd = os.open(name, os.O_RDONLY | os.O_CLOEXEC, dir_fd=dir_fd)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def clear(dir_fd: int) -> int:
    """Remove every slot (`cagefs compact`: no records are left, then no slots either)."""
    removed = 0
    for name in os.listdir(dir_fd):
        if is_slot(name):
            os.unlink(name, dir_fd=dir_fd)
            removed += 1
    return removed


@dataclass
class _Slots:
    """The pool's bookkeeping, under its lock."""

    free: dict[int, list[str]] = field(default_factory=dict)  # by size
    used: dict[str, bytes] = field(default_factory=dict)  # slot -> the base of its record
    to_zero: list[str] = field(default_factory=list)
    # Found at start, by size: zeros, or a cut write, or an obsolete record whose first sector
    # an unmount zeroed; checked (zeroed if need be) when their class wants more free slots.
    unchecked: dict[int, list[str]] = field(default_factory=dict)
    want: dict[int, int] = field(default_factory=dict)  # free slots to keep, by class
    doubled: set[int] = field(default_factory=set)  # classes whose want grew since a batch
    sizes: dict[str, int] = field(default_factory=dict)  # every slot's size
    # Their sum (slots are only added while mounted): the thread asks at every wake-up, and a
    # sum over thousands of slots held the GIL against the requests.
    made: int = 0
    next_number: int = 1


class SlotPool:
    """A journal's slots and ready headers, and the thread that makes, zeroes and checks them."""

    def __init__(
        self, dir_fd: int, recipients: Sequence[Recipient], tagger: Tagger,
        limit: int = POOL_LIMIT,
    ) -> None:
        self._dir_fd = dir_fd
        self._recipients = recipients
        self._tagger = tagger
        self._limit = limit
        self._headers: deque[tuple[bytes, bytes]] = deque()
        header_length = len(self._new_header()[1])  # fixed for a set of recipients
        self.sizes = {k: header_length + payload_size(capacity(k)) for k in CLASSES}
        self._state = _Slots()
        self._lock = threading.Condition()
        self._closed = False
        self._busy = False
        self._disk_full = False
        # A record found no free slot and none can be made (the pool is at its limit): the
        # mount folds the file holding most slots, to free them
        # (fs/publisher.py), instead of writing record files (create, rename, dir fsync) on.
        self.starved = False
        for name in sorted(os.listdir(dir_fd)):
            match = SLOT.fullmatch(name)
            if match is None:
                continue
            self._state.next_number = max(self._state.next_number, int(match[1]) + 1)
            size = os.stat(name, dir_fd=dir_fd).st_size
            if size in self.sizes.values():
                self._state.sizes[name] = size
                self._state.made += size
                self._state.unchecked.setdefault(size, []).append(name)
            else:  # made for other recipients (a key change since): made again when needed
                os.unlink(name, dir_fd=dir_fd)
        self._thread = threading.Thread(target=self._work, name="cagefs-slots", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------ the write path

    def take(self, length: int) -> tuple[str, int] | None:
        """A free slot for a record of `length` plaintext bytes (the smallest class that
        holds it, or the next), or None (then more are made); the slot is the caller's."""
        fits = [k for k in CLASSES if capacity(k) >= length]
        if not fits:
            return None
        with self._lock:
            want = self._state.want
            want[fits[0]] = max(want.get(fits[0], 0), _BATCH)
            for k in fits[:2]:
                free = self._state.free.get(self.sizes[k])
                if free:
                    name = free.pop()
                    if len(free) < want[fits[0]] // 2:
                        self._lock.notify()
                    return name, self.sizes[k]
            if fits[0] not in self._state.doubled:  # once per batch made, however many miss
                self._state.doubled.add(fits[0])
                want[fits[0]] = min(2 * want[fits[0]], self._limit // self.sizes[fits[0]])
            size = self.sizes[fits[0]]
            room = self._limit - self._state.made
            if room < size and not self._state.unchecked.get(size):
                self.starved = True
            self._lock.notify()
            return None

    def header(self) -> tuple[bytes, bytes]:
        """A fresh file key and its header (with proof), never handed out twice."""
        with self._lock:
            if len(self._headers) < READY_HEADERS // 2:
                self._lock.notify()
            if self._headers:
                return self._headers.popleft()
        return self._new_header()

    def holds(self, name: str, base: bytes) -> None:
        """The slot now holds a durable record of version `base`."""
        with self._lock:
            self._state.used[name] = base

    def give_back(self, name: str) -> None:
        """A slot taken but not written: free again."""
        with self._lock:
            self._state.free.setdefault(self._state.sizes[name], []).append(name)

    def spoiled(self, name: str) -> None:
        """A write into the slot failed: zeroed before it is used again."""
        with self._lock:
            self._state.to_zero.append(name)
            self._lock.notify()

    def held(self) -> dict[bytes, int]:
        """How many slots each version's records hold."""
        with self._lock:
            counts: dict[bytes, int] = {}
            for base in self._state.used.values():
                counts[base] = counts.get(base, 0) + 1
            return counts

    def records_of(self, base: bytes) -> list[str]:
        with self._lock:
            return [name for name, held in self._state.used.items() if held == base]

    def release(self, base: bytes) -> None:
        """The records of `base` are obsolete (that is durable): their slots are zeroed."""
        with self._lock:
            for name in [n for n, held in self._state.used.items() if held == base]:
                del self._state.used[name]
                self._state.to_zero.append(name)
            self._lock.notify()

    def prepare(self, data: int, count: int) -> None:
        """Keep `count` free slots for records of up to `data` changed bytes, and wait."""
        k = next(k for k in CLASSES if k >= data)
        with self._lock:
            self._state.want[k] = max(self._state.want.get(k, 0), count)
        self.settle()

    def settle(self) -> None:
        """Wait until the thread has nothing left to do (tests, and a look at the pool)."""
        with self._lock:
            self._lock.notify()
            while not self._closed and (self._busy or self._pending()):
                self._lock.wait(0.05)

    def free_count(self) -> int:
        with self._lock:
            return sum(len(names) for names in self._state.free.values())

    def close(self) -> None:
        """Stop the thread. Slots still to be zeroed hold obsolete records: their first
        sector is zeroed, so they hold none (the next mount zeroes the rest before using
        them). Not flushed: if a crash undoes it, recovery finds an obsolete record and drops
        it."""
        with self._lock:
            self._closed = True
            self._lock.notify()
        self._thread.join()
        for name in self._state.to_zero:
            with contextlib.suppress(OSError):
                fd = os.open(name, os.O_WRONLY | os.O_CLOEXEC, dir_fd=self._dir_fd)
                try:
                    os.pwrite(fd, _ZERO_SECTOR, 0)
                finally:
                    os.close(fd)

    # ------------------------------------------------------------ the thread

    def _pending(self) -> bool:
        return bool(
            self._state.to_zero or self._short() is not None
            or len(self._headers) < READY_HEADERS
        )

    def _short(self) -> int | None:
        """A class with fewer free slots than wanted that can have more: slots found at
        start, or new ones within the limit."""
        state = self._state
        room = self._limit - state.made
        for k, want in state.want.items():
            size = self.sizes[k]
            if len(state.free.get(size, [])) < want and (state.unchecked.get(size) or size <= room):
                return k
        return None

    def _work(self) -> None:
        while True:
            with self._lock:
                self._busy = False
                self._lock.notify_all()
                while not self._closed and not self._pending():
                    self._lock.wait()
                if self._closed:
                    return
                self._busy = True
                state = self._state
                zeroes, state.to_zero = state.to_zero, []
                grow = self._short()
                checks: list[str] = []
                if grow is not None:
                    found = state.unchecked.get(self.sizes[grow], [])
                    need = state.want[grow] - len(state.free.get(self.sizes[grow], []))
                    checks, found[:] = found[:need], found[need:]
                headers = len(self._headers) < READY_HEADERS
            try:
                if checks or zeroes:
                    self._make_free(checks, zeroes)
                elif grow is not None:
                    self._grow(grow)
                if headers:
                    made = [self._new_header() for _ in range(READY_HEADERS // 2)]
                    with self._lock:
                        self._headers.extend(made)
            except OSError as exc:  # a full disk: the write path falls back to record files
                log.warning("journal slots: %s", exc.strerror or exc)
                with self._lock:
                    self._state.want.clear()
            except Exception:  # a bug: no more slots (records are files), the mount goes on
                log.exception("journal slots stopped")
                with self._lock:
                    self._closed = True
                    self._state.free.clear()
                    self._lock.notify_all()
                return

    def _make_free(self, checks: list[str], zeroes: list[str]) -> None:
        """Slots found at start (zeros, or not?) and slots of obsolete records: zeros, made
        durable, then free, a batch at a time (a fold frees thousands of slots at once)."""
        obsolete = set(zeroes)

        def zeroed(fd: int, name: str) -> bool:
            """(Synced however zeroed: an obsolete record's bytes must not come back under
            a record written over them, or a torn write there would show no zeros.)"""
            if name in obsolete or not _all_zero(fd):
                _zero(fd, self._state.sizes[name])
            return True

        names = checks + zeroes
        for start in range(0, len(names), _ZERO_BATCH):
            batch = names[start : start + _ZERO_BATCH]
            if self._closed:  # unmounting: close() makes the obsolete ones hold no record
                with self._lock:
                    self._state.to_zero += [n for n in names[start:] if n in obsolete]
                return
            try:
                _written_then_synced(self._dir_fd, batch, zeroed)
            except BaseException:
                with self._lock:
                    self._state.to_zero += [n for n in names[start:] if n in obsolete]
                raise
            with self._lock:
                for name in batch:
                    self._state.free.setdefault(self._state.sizes[name], []).append(name)

    def _grow(self, k: int) -> None:
        size = self.sizes[k]
        if free_bytes(self._dir_fd) < FREE_MARGIN + _BATCH * size:
            if not self._disk_full:
                log.info("journal slots: the disk is nearly full: no more slots for now")
            self._disk_full = True
            with self._lock:
                self._state.want.clear()
            return
        self._disk_full = False
        with self._lock:
            room = (self._limit - self._state.made) // size
            batch = max(_BATCH, _GROW_BYTES // size)
            count = min(batch, room, self._state.want[k] - len(self._state.free.get(size, [])))
            if count <= 0:
                return
            first = self._state.next_number
            self._state.next_number += count
        made = [slot_name(number) for number in range(first, first + count)]
        try:
            for name in made:
                os.close(
                    os.open(
                        name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600,
                        dir_fd=self._dir_fd,
                    )
                )
            # A new slot of unwritten extents needs no fsync of its own: it reads as zeros
            # whatever a crash leaves of it (size 0: removed at the next start), and a
            # record's fdatasync makes the size and blocks it needs durable with it. Only its
            # name needs the directory fsync. Written zeros are synced as before.
            _written_then_synced(self._dir_fd, made, lambda fd, _: not _zero(fd, size))
            os.fsync(self._dir_fd)
        except BaseException:
            for name in made:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(name, dir_fd=self._dir_fd)
            raise
        with self._lock:
            for name in made:
                self._state.sizes[name] = size
            self._state.made += size * len(made)
            self._state.free.setdefault(size, []).extend(made)
            self._state.doubled.discard(k)

    def _new_header(self) -> tuple[bytes, bytes]:
        file_key = new_file_key()
        stanzas = wrap_file_key(file_key, self._recipients)
        stanzas += self._tagger(file_key, stanzas)
        return file_key, encode_header(stanzas, file_key)


def payload_room(slot_size: int, header_length: int) -> int | None:
    """The plaintext length that fills a slot of `slot_size` after a header of
    `header_length` exactly, or None if no payload has that length."""
    try:
        return plaintext_size(slot_size - header_length)
    except AgeError:
        return None
