"""Replace a backing file by a new version, atomically (I3), keeping its mode, owner and times.

Two ways, both under a proof of origin (store/auth.py) for the new header:
- `rewrap_file`: the same file key and payload under a new header (other recipient stanzas,
  or a proof under another authentication key). The payload key depends only on the file key
  and the payload nonce, so the payload is copied unchanged, in the kernel where it can
  (`copy_file_range`): no payload crypto, and no plaintext anywhere (I1, I2).
- `Reencrypter`: a fresh file key and payload (rekey), decrypted and sealed again as the
  mount writes a stream (past its first MiB, in a sealer process), in constant memory.
"""

import collections
import contextlib
import errno
import mmap
import os
import threading
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from cagefs.age.header import Header, Stanza, encode_header
from cagefs.age.recipients import Recipient
from cagefs.age.stream import CHUNK_CT_SIZE, CHUNK_SIZE, Buffer, PayloadReader
from cagefs.pools import LazyPool
from cagefs.store.atomic import replace_atomically
from cagefs.store.auth import STANZA_TYPE, AuthKey, FileAuth, Kind
from cagefs.store.links import put_in_place
from cagefs.store.sealer import SLOT_SIZE, SealerError, SealerPool, SealJob
from cagefs.store.versions import NewVersion

BLOCK = 4 * 1024 * 1024
INLINE_UNTIL = 1024 * 1024  # smaller files are not worth a sealer's round trips
_REKEY_SEALERS = 2  # one for the file being decrypted, one for the tail of the one before
_NO_COPY_RANGE = (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP)
AHEAD_SLOTS = 4  # a rekey reads the ciphertext of this many sealer slots at a time...
AHEAD_BLOCKS = 3  # ...this many such blocks ahead of its decryption
_AHEAD_BUFFER = AHEAD_SLOTS * SLOT_SIZE // CHUNK_SIZE * CHUNK_CT_SIZE  # a block's ciphertext


def recipient_stanzas(header: Header) -> list[Stanza]:
    """A header's stanzas but its proof of origin."""
    return [s for s in header.stanzas if s.type != STANZA_TYPE]


def rewrap_file(
    root: Path,
    relative: str,
    fd: int,
    header: Header,
    file_key: bytes,
    stanzas: Sequence[Stanza],
    key: AuthKey,
    names: Sequence[str] = (),
) -> None:
    """Replace `root/relative` (open as `fd`, with `header`) by a version whose header holds
    `stanzas` (wrapping `file_key`) and a proof under `key`, and the same payload; `names`:
    all backing paths of a hard-linked file (`links.LinkIndex`), which all get it."""
    new_header = encode_header([*stanzas, key.tag(file_key, stanzas, Kind.FILE)], file_key)
    st = os.fstat(fd)
    with replace_atomically(root, relative, st.st_mode & 0o7777, names) as out:
        out.write(new_header)
        out.flush()
        copy_range(fd, out.fileno(), header.length, st.st_size - header.length, len(new_header))
        keep_attributes(out.fileno(), st)


class Reencrypter:
    """Re-encrypts files one after another (rekey), each file's tail on a thread of its own.

    A file's tail (the sealer's last slots, fsync, rename, directory fsync, and the kernel
    freeing the old version) took ~45 ms of every 64 MiB file with both cores idle (1 GiB in
    16 files: a fifth of the run). Here it overlaps the next file's reading and decrypting,
    which use another sealer. At most one tail runs at a time, so at most two sealers (two
    rings) are busy. A tail's error is raised by the next `reencrypt`, which then gives up
    its own file too, or by `close`, which waits for the last tail.
    """

    def __init__(self) -> None:
        self.sealers = SealerPool(limit=_REKEY_SEALERS, keep_idle=_REKEY_SEALERS)
        self._read_buffers: list[memoryview] = []  # the ciphertext read ahead, file after file
        self._tails = ThreadPoolExecutor(1, thread_name_prefix="tail")
        self._tail: Future[None] | None = None
        # Both sealers start at once, now: one after the other, when first needed, each
        # start (a Python process importing the engine) held the rekey up 0.1-0.5 s.
        self._starting = [
            threading.Thread(target=self.sealers.warm) for _ in range(_REKEY_SEALERS)
        ]
        for thread in self._starting:
            thread.start()

    def reencrypt(
        self,
        root: Path,
        relative: str,
        fd: int,
        reader: PayloadReader,
        recipients: Sequence[Recipient],
        key: AuthKey,
        names: Sequence[str] = (),
    ) -> None:
        """Replace `root/relative` (open as `fd`, read by `reader`) by the same plaintext under
        a fresh file key for `recipients`, with a proof under `key` (under every one of `names`,
        as `rewrap_file`). The file is replaced once its tail has run (`close`); `fd` may be
        closed as soon as this returns."""
        st = os.fstat(fd)
        self._started()
        sealing = _Sealing(NewVersion(root, recipients, FileAuth(key)), self.sealers)
        sealing.feed_from(reader, fd, self._read_buffers)
        try:
            self.wait()
        except BaseException:
            sealing.abandon()
            raise
        self._tail = self._tails.submit(
            _finish_and_publish, sealing, root, relative, st, names
        )

    def close(self) -> None:
        """Wait for the last file to be replaced (raising its error); stop the sealers."""
        try:
            self.wait()
        finally:
            self._tails.shutdown()
            self._started()
            self.sealers.close()

    def _started(self) -> None:
        """Wait for the sealers started ahead: until then, `take` would find none free."""
        while self._starting:
            self._starting.pop().join()

    def wait(self) -> None:
        """Until the file before is in place (raising its error): before a file that may be
        that one under another name is looked at."""
        tail, self._tail = self._tail, None
        if tail is not None:
            tail.result()


def _finish_and_publish(
    sealing: "_Sealing", root: Path, relative: str, st: os.stat_result, names: Sequence[str]
) -> None:
    sealing.finish()
    publish(sealing.version, root, relative, st, names)


def write_version(
    root: Path,
    recipients: Sequence[Recipient],
    key: AuthKey,
    sealers: SealerPool,
    blocks: Iterable[Buffer],
    size: int,
) -> NewVersion:
    """A sealed new version of `size` plaintext bytes from `blocks`, in `.cagefs/tmp/`; on
    failure nothing is left behind."""
    sealing = _Sealing(NewVersion(root, recipients, FileAuth(key)), sealers)
    sealing.feed(blocks, size)
    sealing.finish()
    return sealing.version


def publish(
    version: NewVersion, root: Path, relative: str, st: os.stat_result, names: Sequence[str] = ()
) -> None:
    """Give a sealed version `st`'s owner, mode and times, make it durable and rename it to
    `root/relative` (I3), or link it under every one of `names`; on failure the temp is
    removed."""
    try:
        keep_attributes(version.fd, st)
        os.fsync(version.fd)
        put_in_place(root, version.path, relative, names)
    except BaseException:
        version.discard()
        raise
    os.close(version.fd)


class _Sealing:
    """A new version's payload being sealed as a mount's stream is (fs/streaming.py, which the
    store cannot import): past INLINE_UNTIL, by a sealer process, so that decrypting the old
    version here and encrypting the new one there use both cores.

    `feed` or `feed_from` return once all the plaintext is handed over; `finish` waits for the
    sealer to have written it. A feed or finish that fails discards the version; after a
    successful feed the caller either finishes or `abandon`s it.
    """

    def __init__(self, version: NewVersion, sealers: SealerPool) -> None:
        self.version = version
        self._sealers = sealers
        self._job: SealJob | None = None
        self._size = 0

    def feed(self, blocks: Iterable[Buffer], size: int) -> None:
        """The plaintext from `blocks`, `size` bytes in all."""
        self._begin(size)
        self._feed_blocks(blocks)

    def feed_from(self, reader: PayloadReader, fd: int, buffers: list[memoryview]) -> None:
        """The plaintext of `reader` (on `fd`), decrypted straight into the slots of the
        sealer's ring, if there is one: no plaintext is copied. The kernel is told the file
        is read sequentially (twice the read-ahead): 1 GiB read cold in 0.7-1.0 s so, 1.2-1.6 s
        without, and 1.3-1.4 s with direct.ReadAhead's 1 MiB O_DIRECT reads. The ciphertext
        is also read ahead on threads (`_CiphertextAhead`): read in turn with the decryption,
        the reads took half of the decrypting process's time. `buffers`: spare read buffers,
        taken and given back."""
        with contextlib.suppress(OSError):  # advice only
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
        self._begin(reader.size)
        job = self._job
        if job is None:
            self._feed_blocks(plaintext_blocks(reader))
            return
        offsets = range(0, reader.size, SLOT_SIZE)
        spans = [reader.ciphertext_span(offset, SLOT_SIZE) for offset in offsets]
        ahead = _CiphertextAhead(fd, spans, buffers)
        try:
            for offset in offsets:
                job.commit(reader.readinto(offset, job.lend(), ahead.pread))
            job.send()
        except BaseException:
            self.abandon()
            raise
        finally:
            ahead.close()

    def finish(self) -> None:
        """Wait for the sealer to have sealed and written everything fed; on failure the
        version is discarded."""
        job, self._job = self._job, None
        if job is None:
            return
        try:
            sealed = job.finish()
        except BaseException:
            self._sealers.retire(job.sealer)
            self.version.discard()
            raise
        self._sealers.give_back(job.sealer)
        if sealed != self._size:  # never publish a version that lost data
            self.version.discard()
            raise SealerError(errno.EIO, f"sealer wrote {sealed} bytes of {self._size}")

    def abandon(self) -> None:
        """Stop the sealer, if any (it leaves the payload unfinished), and discard the version."""
        if self._job is not None:
            self._sealers.retire(self._job.sealer)
            self._job = None
        self.version.discard()

    def _begin(self, size: int) -> None:
        """Take a sealer for a payload of `size` bytes, if it is worth one and one can be had."""
        self._size = size
        sealer = self._sealers.take() if size > INLINE_UNTIL else None
        if sealer is None:
            return
        try:
            self._job = SealJob(sealer, self.version.fd, self.version.hand_over())
        except BaseException:
            self._sealers.retire(sealer)
            self.version.discard()
            raise

    def _feed_blocks(self, blocks: Iterable[Buffer]) -> None:
        try:
            for block in blocks:
                (self._job or self.version).write(block)
            if self._job is None:
                self.version.seal()
            else:
                self._job.send()
        except BaseException:
            self.abandon()
            raise


_read_ahead = LazyPool("cagefs-rekey-read", lambda: 2)  # two reads in flight keep a disk busy


class _CiphertextAhead:
    """Serves `pread` for a `PayloadReader` read in order, span after span (`spans`: the file
    ranges its reads will ask for, in order), from blocks of `AHEAD_SLOTS` spans read ahead
    into reused buffers on I/O threads: the reads overlap the decryption, and no buffer is
    allocated per read. (O_DIRECT reads, which skip the page-cache copy, used less CPU but
    made a cold rekey no faster: the kernel's own read-ahead keeps the disk busier.) A read no
    block holds (out of order, or a block that came short: a file truncated meanwhile) is an
    ordinary pread, so errors are the ordinary ones."""

    def __init__(
        self, fd: int, spans: Sequence[tuple[int, int]], spare: list[memoryview]
    ) -> None:
        self._fd = fd
        self._blocks = iter(
            (group[0][0], group[-1][1])
            for group in (spans[i : i + AHEAD_SLOTS] for i in range(0, len(spans), AHEAD_SLOTS))
        )
        self._spare = spare  # given back to as blocks are let go of: for the next file too
        # (start, stop, buffer, its read: the bytes read from start)
        self._ahead: collections.deque[tuple[int, int, memoryview, Future[int]]] = (
            collections.deque()
        )
        self._schedule()

    def pread(self, size: int, offset: int) -> Buffer:
        while self._ahead:
            start, stop, buffer, read = self._ahead[0]
            if offset < start:
                break
            if offset + size <= stop:
                if start + read.result() < offset + size:
                    break  # came short
                return buffer[offset - start : offset - start + size]
            self._release()  # read past it: its buffer is read into again
        return os.pread(self._fd, size, offset)

    def close(self) -> None:
        """Wait for reads still going (they write into our buffers) and let go of them."""
        self._blocks = iter(())
        while self._ahead:
            self._release()

    def _release(self) -> None:
        _, _, buffer, read = self._ahead.popleft()
        if not read.cancel():
            read.exception()
        self._spare.append(buffer)
        self._schedule()

    def _schedule(self) -> None:
        while len(self._ahead) < AHEAD_BLOCKS and (block := next(self._blocks, None)):
            start, stop = block
            assert stop - start <= _AHEAD_BUFFER, "spans longer than a slot's ciphertext"
            buffer = self._spare.pop() if self._spare else memoryview(mmap.mmap(-1, _AHEAD_BUFFER))
            read = _read_ahead().submit(_pread_into, self._fd, buffer, stop - start, start)
            self._ahead.append((start, stop, buffer, read))


def _pread_into(fd: int, buffer: memoryview, size: int, offset: int) -> int:
    """Read `size` bytes at `offset` into the start of `buffer`; fewer only at end of file."""
    done = 0
    while done < size:
        got = os.preadv(fd, [buffer[done:size]], offset + done)
        if not got:
            break
        done += got
    return done


def plaintext_blocks(reader: PayloadReader) -> Iterator[memoryview]:
    """The plaintext, block by block, in one reused buffer (each block is consumed, copied or
    sealed, before the next is read)."""
    buffer = memoryview(bytearray(min(BLOCK, max(reader.size, 1))))
    if reader.size == 0:
        reader.readinto(0, buffer[:0])  # authenticates the empty payload's one chunk
        return
    for offset in range(0, reader.size, len(buffer)):
        yield buffer[: reader.readinto(offset, buffer)]


def keep_attributes(fd: int, st: os.stat_result) -> None:
    """The old file's owner, mode and times on its new version."""
    os.fchown(fd, st.st_uid, st.st_gid)
    os.fchmod(fd, st.st_mode & 0o7777)  # chown cleared set-id bits
    os.utime(fd, ns=(st.st_atime_ns, st.st_mtime_ns))


def copy_range(src: int, dst: int, offset: int, count: int, dst_offset: int) -> None:
    """Copy in the kernel (copy_file_range) where it can, else through a buffer."""
    done = 0
    try:
        while done < count:
            copied = os.copy_file_range(src, dst, count - done, offset + done, dst_offset + done)
            if copied == 0:
                raise OSError(errno.EIO, "file shrank while being copied")
            done += copied
    except OSError as exc:
        if exc.errno not in _NO_COPY_RANGE:
            raise
    while done < count:
        block = os.pread(src, min(BLOCK, count - done), offset + done)
        if not block:
            raise OSError(errno.EIO, "file shrank while being copied")
        done += os.pwrite(dst, block, dst_offset + done)
