"""The content of one open regular file: the single view every handle shares (I8).

A file is in one of these states, and moves between them as requests arrive:

- clean: reads decrypt chunks of its `current` complete version (I5);
- streaming: a new or truncated file written in order goes straight into a `NewVersion`;
- staged: out-of-order changes sit in an `Overlay` over `current`;
- provisional: `current` is a sealed temp version made while handles are still open (a flush,
  a read of a stream): served, never published, and dropped for `_kept` if saving fails;
- pending: `current` is a sealed temp version waiting for its group publish (I3).

`seal()` turns streaming or staged content into a sealed version; `finalize()` also makes it
the one to publish, which only a state some writer intended may be (I3): the last release, an
fsync, a change with no handle open, unmount. The publisher renames it over the backing file
later (or at once on fsync). Attributes live here while the content is open and are stamped
onto every new version, so a published file keeps its mode and times.
"""

import functools
import os
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import trio

from cagefs.age import CHUNK_SIZE, Buffer, PayloadReader, open_file
from cagefs.fs.cache import new_version_id
from cagefs.fs.env import Env
from cagefs.fs.staging import Overlay, ScratchBlocks
from cagefs.fs.streaming import INLINE_UNTIL, StreamWriter, write_out
from cagefs.store import reclaim
from cagefs.store.direct import ReadAhead
from cagefs.store.journal import Record, version_tag, wants_record
from cagefs.store.versions import NewVersion, check_room

if TYPE_CHECKING:
    from cagefs.fs.inodes import Node

# The kernel splits one large write(2) into concurrent requests and trio may run them in any
# order, so a sequential writer's requests can arrive slightly shuffled. Up to this much is held
# back to be put in order before a stream gives up and falls back to staging.
_REORDER_LIMIT = 8 * 1024 * 1024
_REORDER_MAX_WRITES = 64
_LARGE_READ = 128 * 1024
ChunkUsed = Callable[[int, bytes], None]
_READ_AHEAD_BLOCKS = 4


@dataclass
class Attributes:
    """A file's attributes while its content is open: stat-shaped, so callers need not care."""

    st_mode: int
    st_uid: int
    st_gid: int
    st_atime_ns: int
    st_mtime_ns: int
    st_ctime_ns: int
    st_nlink: int = 1

    @classmethod
    def of(cls, st: os.stat_result) -> "Attributes":
        return cls(st.st_mode, st.st_uid, st.st_gid, st.st_atime_ns, st.st_mtime_ns, st.st_ctime_ns)

    def stamp(self, fd: int) -> None:
        """Give a new version the attributes the file has in the mount."""
        os.fchmod(fd, self.st_mode & 0o7777)
        os.fchown(fd, self.st_uid, self.st_gid)
        os.utime(fd, ns=(self.st_atime_ns, self.st_mtime_ns))


@dataclass
class Version:
    """A complete version that can be read: an open descriptor and its reader."""

    fd: int
    reader: PayloadReader
    id: int
    read_end: int = 0  # where the last large read ended: the next one there is sequential
    ahead: ReadAhead = field(init=False)

    def __post_init__(self) -> None:
        self.ahead = ReadAhead(self.fd)

    def close(self) -> None:
        """Let go of the version. Its descriptor may be the last reference to a removed file
        (a SQLite `-journal`, at every commit), whose freeing then took 1 ms of the unlink on
        the event loop: the reclaim thread closes it."""
        self.ahead.close()
        reclaim.close_later(self.fd)


class FileContent:
    def __init__(self, env: Env, attrs: Attributes, current: Version | None, on_disk: bool) -> None:
        self.env = env
        self.attrs = attrs
        self.current = current
        self.on_disk = on_disk
        self.size = current.reader.size if current else 0
        self.stream: StreamWriter | None = None
        self.overlay: Overlay | None = None
        self.pending: NewVersion | None = None  # sealed and queued for publishing
        self.provisional: NewVersion | None = None  # sealed while handles write: not published
        self._kept: Version | None = None  # while provisional: what a failed save goes back to
        self._early: dict[int, bytes] = {}
        self._early_bytes = 0
        self.handles = 0
        self.pins = 0  # requests holding the content without a handle (Operations._locked_content)
        self.kernel_cached = True  # the kernel may hold pages of this file (directio.py)
        self.lock = trio.Lock()
        self.node: Node | None = None  # set by the inode table when attached
        # The change journal (store/journal.py): `base` is the proof TAG of `current` while it
        # is the published backing file; `records` of the overlay's changes name it.
        self.base: bytes | None = None
        self.records = 0
        self.recorded_bytes = 0
        self.recorded_size = self.size
        self.changed_at = time.monotonic()
        # chmod, chown or utime since an fsync last made the attributes durable (they are
        # stamped on the backing file at once, but nothing syncs it until an fsync asks).
        self.attrs_unsynced = False

    @classmethod
    def open_existing(cls, env: Env, fd: int) -> "FileContent":
        """The content of the backing file open at `fd` (which it takes over)."""
        try:
            opened = open_file(fd, env.identities, env.auth.check)  # tamper evidence
            attrs = Attributes.of(os.fstat(fd))
        except BaseException:
            os.close(fd)
            raise
        content = cls(env, attrs, Version(fd, opened.reader, new_version_id()), on_disk=True)
        content.base = version_tag(opened.header)
        return content

    @classmethod
    def create(cls, env: Env, mode: int, uid: int, gid: int) -> "FileContent":
        now = time.time_ns()
        content = cls(env, Attributes(mode, uid, gid, now, now, now), None, on_disk=False)
        content.truncate(0)
        return content

    @property
    def dirty(self) -> bool:
        return self.stream is not None or self.overlay is not None

    @property
    def idle(self) -> bool:
        """Nothing open or held, nothing unsaved, nothing waiting to publish: safe to forget."""
        return (
            self.handles == 0
            and self.pins == 0
            and not self.dirty
            and self.pending is None
            and self.provisional is None
        )

    def read(self, offset: int, length: int, chunk_used: ChunkUsed | None = None) -> Buffer:
        """`chunk_used(start, chunk)`, if given, hears of each chunk (decrypted or cached) a
        small read of the complete version used (fs/pagestore.py hands the rest to the kernel)."""
        if self.stream:
            self._ensure_overlay() if self._early else self._seal_stream()
        if self.overlay:
            return self.overlay.read(offset, length)
        if self.current is None:
            return b""
        if length >= _LARGE_READ and offset < self.size:
            return self._read_large(self.current, offset, length)

        return self._read_cached(self.current, offset, length, chunk_used)

    def write(self, offset: int, data: Buffer) -> None:
        if offset > self.size:
            check_room(self.env.root, self.size, offset + len(data))
        self._touch()
        if self.stream and offset == self.stream.size:
            self._supersede_early(offset + len(data))
            self.stream.write(data)
            self._write_early_in_order()
            self.size = max(self.size, self.stream.size)
            return
        if self._can_hold_back(offset, len(data)):
            self._early[offset] = bytes(data)
            self._early_bytes += len(data)
            self.size = max(self.size, offset + len(data))
            return
        overlay = self._ensure_overlay()
        try:
            overlay.write(offset, data)
        finally:
            self.size = overlay.size
        if self.env.policy.should_spill(overlay.blocks, self.size):
            overlay.move_to(ScratchBlocks(self.env.root))

    def truncate(self, size: int) -> None:
        if size > self.size:
            check_room(self.env.root, self.size, size)
        self._touch()
        if size == 0 and self.env.policy.streams:
            self._drop_changes()
            self.stream = StreamWriter(self._new_version(), self.env.sealers)
            self.size = 0
        elif not (self.stream and size == self.stream.size and not self._early):
            self._ensure_overlay().truncate(size)
            self.size = size

    def set_times(self, atime_ns: int | None, mtime_ns: int | None) -> None:
        if atime_ns is not None:
            self.attrs.st_atime_ns = atime_ns
        if mtime_ns is not None:
            self.attrs.st_mtime_ns = mtime_ns
        self._restamp()

    def set_mode(self, mode: int) -> None:
        self.attrs.st_mode = (self.attrs.st_mode & ~0o7777) | (mode & 0o7777)
        self._restamp()

    def kill_privileges(self) -> None:
        """A write or truncate by an unprivileged user: drop setuid, and setgid where group
        execute is set (without it, setgid marks mandatory locking, not privilege)."""
        mode = self.attrs.st_mode
        kill = stat.S_ISUID | (stat.S_ISGID if mode & stat.S_IXGRP else 0)
        if mode & kill:
            self.set_mode(mode & ~kill)

    def set_owner(self, uid: int | None, gid: int | None) -> None:
        self.attrs.st_uid = self.attrs.st_uid if uid is None else uid
        self.attrs.st_gid = self.attrs.st_gid if gid is None else gid
        self._restamp()

    async def wait_writable(self, size: int) -> None:
        """Before `write` of `size` bytes: a stream gets ready to take it, and the held-back
        writes it may release, without blocking the loop (backpressure: a sealer that is
        behind holds the next write back)."""
        if self.stream is not None:
            await self.stream.make_room(size + self._early_bytes)

    async def check_stream(self) -> None:
        """close(2) learns of a failure (a full disk) while the data was being written, and
        the space the rest of the stream needs is reserved, so its seal cannot fail for room."""
        if self.stream is not None:
            await self.stream.settle()

    def abandon_changes(self) -> None:
        """Give up unsaved changes that cannot be saved: back to the last version a writer
        intended (a version sealed at a flush while the file was still written is dropped)."""
        self._drop_changes()
        if self.provisional is not None:
            assert self.current is not None
            self.current.close()
            self.provisional.remove()
            self.provisional = None
            self.current, self._kept = self._kept, None
        self.size = self.current.reader.size if self.current else 0
        if self.current is not None:  # its time too (the caller drops the kernel's pages)
            self.attrs.st_mtime_ns = os.fstat(self.current.fd).st_mtime_ns
        if self.records:
            self._reload_records()

    def _reload_records(self) -> None:
        """Back to base + records, the file's durable state: read them back from the journal."""
        journal, base = self.env.journal, self.current
        assert journal is not None and base is not None and self.base is not None
        replay = journal.replay(self.base, base.reader.size, self.env.identities)
        overlay = Overlay(
            self.env.policy.blocks_for(replay.size),
            base.reader.size,
            base.reader.read_chunk,
            self.env.partials,
        )
        overlay.truncate(replay.base_limit)
        overlay.truncate(replay.size)
        for index in replay.changed():
            overlay.blocks.put(index, replay.block(index, base.reader.read_chunk))
        overlay.mark_recorded()
        self.overlay, self.size = overlay, replay.size

    async def seal_staged(self) -> None:
        """Seal staged changes (but not a stream: `check_stream` reserved its room). A change
        the journal will take at the last release or fsync is only checked for room."""
        if self.overlay is not None and self._wants_record():
            check_room(self.env.root, 0, self.overlay.unrecorded.total())
        elif self.overlay or self._early:
            await self.seal()

    async def finalize(self, journal: bool = False, fsync: bool = False) -> None:
        """Make what is unsaved durable-to-be: a state a writer intended. With `journal`
        (fsync, last release), a small change to a large published file becomes a journal
        record, durable when this returns (with `fsync`, any change to a small one too);
        otherwise it is sealed into a new version and queued for publishing."""
        overlay = self.overlay
        if journal and overlay is not None and self._wants_record(fsync):
            if overlay.recorded and not self.records:  # no change at all: nothing to keep
                self.overlay = None
                overlay.close()
            else:
                await self._write_record(overlay)
            return
        await self.seal()
        self._promote()

    async def sync_attributes(self) -> None:
        """fsync(2) of a file whose content is saved: a chmod, chown or utime since the last
        fsync is durable when this returns (they are on the backing file's inode)."""
        if not self.attrs_unsynced or self.dirty or self.provisional or self.pending:
            return
        if self.current is None or not self.on_disk:
            return
        self.attrs_unsynced = False  # (a change while this waits sets it again)
        try:
            await trio.to_thread.run_sync(os.fsync, self.current.fd)
        except BaseException:
            self.attrs_unsynced = True
            raise

    @property
    def compactable(self) -> bool:
        """Records to fold, and nothing newer that no writer has asked to keep yet (a
        stream, a version sealed at a flush, unrecorded changes while handles are open)."""
        if self.records == 0 or self.stream is not None or self.provisional is not None:
            return False
        return self.handles == 0 or (self.overlay is not None and self.overlay.recorded)

    def _wants_record(self, fsync: bool = False) -> bool:
        if self.env.journal is None or self.stream is not None or self._early:
            return False
        if self.pending is not None or self.provisional is not None or self.base is None:
            return False
        if self.node is None or self.node.path is None or self.current is None:
            return False
        overlay = self.overlay
        assert overlay is not None
        if overlay.recorded and self.records:
            return True  # nothing new since the last record (attributes: a record of them)
        slots = self.env.journal.slots
        if slots.starved and self.base in slots.held():
            return False  # no slot is free, and a fold of this file frees those it holds
        if os.fstat(self.current.fd).st_nlink != 1:
            return False  # several names share the backing file: the full publish path
        size = max(self.size, self.current.reader.size)
        ranges = overlay.unrecorded
        return wants_record(size, ranges.total(), len(ranges), self.recorded_bytes, fsync)

    async def _write_record(self, overlay: Overlay) -> None:
        """Write the changes since the last record as the next one (off the loop: it is
        encrypted and fsync'ed), then mark them recorded. A chmod, chown or utime since then
        is a change too: the record carries the times, the base's inode (fsync'ed first)
        the mode and owner, which is where recovery takes them from."""
        if overlay.recorded and not self.attrs_unsynced:
            return
        journal = self.env.journal
        assert journal is not None and self.base is not None and self.node is not None
        assert self.node.path is not None and self.current is not None
        ranges = overlay.unrecorded.spans()
        record = self._record(self.node.path, overlay.cut, ranges)
        data = (overlay.read(offset, length) for offset, length in ranges)
        base_fd = self.current.fd if self.attrs_unsynced else None
        self.attrs_unsynced = False  # (a change while this waits sets it again)

        def write() -> int:
            if base_fd is not None:
                os.fsync(base_fd)
            return journal.write(record, data)

        try:
            self.recorded_bytes += await self.env.record_writers.run(write)
        except BaseException:
            self.attrs_unsynced = self.attrs_unsynced or base_fd is not None
            raise
        overlay.mark_recorded()
        self.records += 1
        self.recorded_size = self.size
        self.env.journaled.add(self)

    def _record(self, path: str, cut: int, ranges: list[tuple[int, int]]) -> Record:
        assert self.base is not None
        a = self.attrs
        return Record(
            path,
            self.base,
            self.records + 1,
            self.size,
            cut,
            a.st_mode & 0o7777,
            a.st_uid,
            a.st_gid,
            a.st_atime_ns,
            a.st_mtime_ns,
            ranges,
        )

    async def record_move(self, new_path: str) -> None:
        """A rename: one more record, with no change, naming the new path, so that recovery
        finds the base under whichever name the crash left it (records name every path)."""
        if self.records == 0 or self.env.journal is None:
            return
        record = self._record(new_path, self.recorded_size, [])
        record.size = self.recorded_size
        self.recorded_bytes += await self.env.record_writers.run(self.env.journal.write, record, [])
        self.records += 1

    def forget_records(self) -> bytes | None:
        """The file's records are obsolete (a new version published, or the file gone):
        returns the base they name, for the caller to drop them once that is durable."""
        if self.records == 0:
            return None
        base = self.base
        self.records = self.recorded_bytes = 0
        self.env.journaled.discard(self)
        return base

    async def seal(self) -> None:
        """Seal whatever is unsaved into a complete version (provisional while handles are
        open: see `_adopt`)."""
        if self._early:
            self._ensure_overlay()
        if self.stream:
            self._seal_stream()
        elif self.overlay:
            overlay = self.overlay
            write = functools.partial(
                write_out, self._new_version(), overlay.chunks(), self.env.sealers
            )
            if self.size > INLINE_UNTIL:  # a sealer process seals the rest: wait off the loop
                version = await trio.to_thread.run_sync(write)
            else:
                version = write()
            self.overlay = None
            self._adopt(version)
            if isinstance(overlay.blocks, ScratchBlocks):
                # Closing frees the scratch file, seconds for a large one on some filesystems:
                # this request waits for it, the loop does not.
                await trio.to_thread.run_sync(overlay.close)
            else:
                overlay.close()

    def published(self) -> bytes | None:
        """The pending version is now the backing file; returns the base whose records that
        made obsolete (to drop once the rename is durable), if any."""
        obsolete = self.forget_records()
        if self.pending is not None:
            self.base = self.pending.proof
        self.pending = None
        self.on_disk = True
        return obsolete

    def discard_pending(self) -> None:
        """The file was unlinked before its new version was published: drop the temp."""
        if self.pending:
            self.pending.remove()
            self.pending = None

    def close(self) -> None:
        """Release everything: descriptors, staging, and any version never published."""
        self._drop_changes()
        self.discard_pending()
        if self.provisional is not None:
            self.provisional.remove()
            self.provisional = None
        if self._kept is not None:
            self._kept.close()
            self._kept = None
        if self.current:
            self.current.close()
            self.current = None

    def _read_large(self, version: Version, offset: int, length: int) -> bytearray:
        """Sequential readers ask for readahead-sized blocks: decrypt straight into the reply
        (batched, in parallel), with the next blocks' ciphertext read ahead (`ReadAhead`), and
        keep the chunk cache for small reads."""
        buffer = bytearray(min(length, self.size - offset))
        version.reader.readinto(offset, buffer, version.ahead.pread)
        size = len(buffer)
        if offset == version.read_end:
            version.ahead.schedule(
                [
                    version.reader.ciphertext_span(offset + size * ahead, size)
                    for ahead in range(1, _READ_AHEAD_BLOCKS + 1)
                ]
            )
        version.read_end = offset + size
        return buffer

    def _read_cached(
        self, version: Version, offset: int, length: int, chunk_used: ChunkUsed | None
    ) -> Buffer:
        end = min(offset + length, self.size)
        if offset >= end:
            return version.reader.read(offset, 0)  # still authenticates an empty file once
        cache = self.env.cache
        parts = []
        for index in range(offset // CHUNK_SIZE, (end - 1) // CHUNK_SIZE + 1):
            chunk = cache.get(version.id, index)
            if chunk is None:
                chunk = version.reader.read_chunk(index)
                cache.put(version.id, index, chunk)
            start = index * CHUNK_SIZE
            if chunk_used is not None:
                chunk_used(start, chunk)
            parts.append(memoryview(chunk)[max(offset - start, 0) : end - start])
        # A read within one chunk (every 4 KiB page) is a view of the cached chunk: no copy,
        # and safe, since a chunk is an immutable `bytes` that the view keeps alive.
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def _can_hold_back(self, offset: int, length: int) -> bool:
        """A write a little ahead of a stream is kept until the gap before it is filled.

        Only writes that overlap no other held-back write qualify, so the order in which
        they are finally applied cannot matter.
        """
        end = offset + length
        return (
            self.stream is not None
            and offset > self.stream.size
            and len(self._early) < _REORDER_MAX_WRITES
            and self._early_bytes + length <= _REORDER_LIMIT
            and all(end <= o or offset >= o + len(d) for o, d in self._early.items())
        )

    def _supersede_early(self, end: int) -> None:
        """An in-order write up to `end` is newer than any held-back write it overlaps."""
        for start in [o for o in self._early if o < end]:
            data = self._early.pop(start)
            self._early_bytes -= len(data)
            if start + len(data) > end:
                self._early[end] = data[end - start :]
                self._early_bytes += start + len(data) - end

    def _write_early_in_order(self) -> None:
        assert self.stream is not None
        while (data := self._early.pop(self.stream.size, None)) is not None:
            self._early_bytes -= len(data)
            self.stream.write(data)

    def _ensure_overlay(self) -> Overlay:
        if self.overlay is None:
            early, self._early, self._early_bytes = self._early, {}, 0
            if self.stream:
                self._seal_stream()
            base: Callable[[int], bytes] | None = None
            if self.current is not None:
                base = self.current.reader.read_chunk
            size = self.current.reader.size if self.current else 0
            blocks = self.env.policy.blocks_for(self.size)
            self.overlay = Overlay(blocks, size, base, self.env.partials)
            for offset, data in early.items():
                self.overlay.write(offset, data)
            self.overlay.truncate(self.size)
        return self.overlay

    def _new_version(self) -> NewVersion:
        return self.env.new_version()

    def _seal_stream(self) -> None:
        stream = self.stream
        assert stream is not None
        self.stream = None
        try:
            version = stream.seal()
        except BaseException:
            stream.discard()
            raise
        self._adopt(version)

    def _adopt(self, version: NewVersion) -> None:
        """Make a sealed version the current one, provisional while handles are open.

        A flush comes from closing any copy of a descriptor (`dup`, a child that exits or
        execs): the file may still be written through the others, so the version sealed there
        is served but not published (I3), and the last intended version is kept to go back to.
        """
        self.attrs.stamp(version.fd)
        previous, self.current = (
            self.current,
            Version(version.fd, version.open_reader(self.env.identities), new_version_id()),
        )
        if self.provisional is not None:  # an older provisional version: nobody wants it now
            assert previous is not None
            previous.close()
            self.provisional.remove()
        else:
            self._kept = previous
        self.provisional = version
        if self.handles == 0:
            self._promote()

    def _promote(self) -> None:
        """The provisional version becomes the one to publish; older ones are let go."""
        if self.provisional is None:
            return
        self.discard_pending()
        if self._kept is not None:
            self._kept.close()
            self._kept = None
        self.pending, self.provisional = self.provisional, None
        self.env.queue_publish(self)

    def _drop_changes(self) -> None:
        self._early, self._early_bytes = {}, 0
        if self.stream:
            self.stream.discard()
            self.stream = None
        if self.overlay:
            self.overlay.close()
            self.overlay = None

    def _touch(self) -> None:
        now = time.time_ns()
        self.attrs.st_mtime_ns = self.attrs.st_ctime_ns = now
        self.changed_at = time.monotonic()

    def _restamp(self) -> None:
        """Attribute changes reach the version on disk at once, not only the next one."""
        self.attrs.st_ctime_ns = time.time_ns()
        self.attrs_unsynced = True
        if self.current and (not self.dirty or self.records):
            # With records, `current` is their base: mode and owner are read from it when
            # they are folded (times come from the last record).
            self.attrs.stamp(self.current.fd)
