"""Replace a backing file by a new version, atomically (I3), keeping its mode, owner and times.

Two ways, both under a proof of origin (store/auth.py) for the new header:
- `rewrap_file`: the same file key and payload under a new header (other recipient stanzas,
  or a proof under another authentication key). The payload key depends only on the file key
  and the payload nonce, so the payload is copied unchanged, in the kernel where it can
  (`copy_file_range`): no payload crypto, and no plaintext anywhere (I1, I2).
- `reencrypt_file`: a fresh file key and payload (rekey), decrypted and sealed again as the
  mount writes a stream (past its first MiB, in a sealer process), in constant memory.
"""

import errno
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from cagefs.age.header import Header, Stanza, encode_header
from cagefs.age.recipients import Recipient
from cagefs.age.stream import Buffer, PayloadReader
from cagefs.store.atomic import replace_atomically
from cagefs.store.auth import STANZA_TYPE, AuthKey, FileAuth, Kind
from cagefs.store.links import put_in_place
from cagefs.store.sealer import SealerError, SealerPool, SealJob
from cagefs.store.versions import NewVersion

BLOCK = 4 * 1024 * 1024
INLINE_UNTIL = 1024 * 1024  # smaller files are not worth a sealer's round trips
_NO_COPY_RANGE = (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP)


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


def reencrypt_file(
    root: Path,
    relative: str,
    fd: int,
    reader: PayloadReader,
    recipients: Sequence[Recipient],
    key: AuthKey,
    sealers: SealerPool,
    names: Sequence[str] = (),
) -> None:
    """Replace `root/relative` (open as `fd`, read by `reader`) by the same plaintext under a
    fresh file key for `recipients`, with a proof under `key` (under every one of `names`, as
    `rewrap_file`)."""
    st = os.fstat(fd)
    version = write_version(root, recipients, key, sealers, plaintext_blocks(reader), reader.size)
    publish(version, root, relative, st, names)


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
    version = NewVersion(root, recipients, FileAuth(key))
    try:
        _seal(version, blocks, sealers, size)
    except BaseException:
        version.discard()
        raise
    return version


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


def _seal(version: NewVersion, blocks: Iterable[Buffer], sealers: SealerPool, size: int) -> None:
    """Seal the payload as a mount's stream is sealed (fs/streaming.py, which the store cannot
    import): past INLINE_UNTIL, by a sealer process, so that decrypting the old version here
    and encrypting the new one there use both cores."""
    sealer = sealers.take() if size > INLINE_UNTIL else None
    if sealer is None:
        for block in blocks:
            version.write(block)
        version.seal()
        return
    try:
        job = SealJob(sealer, version.fd, version.hand_over())
        for block in blocks:
            job.write(block)
        sealed = job.finish()
    except BaseException:
        sealers.retire(sealer)
        raise
    sealers.give_back(sealer)
    if sealed != size:  # never publish a version that lost data
        raise SealerError(errno.EIO, f"sealer wrote {sealed} bytes of {size}")


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
