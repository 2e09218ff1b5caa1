"""Writes that bypass the kernel's page cache, and how every other handle still sees them (I8).

A file opened write-only to be written from scratch (created, or opened with O_TRUNC: `cp`,
`dd`, `tar x`, rsync, a shell's `>`) gets FUSE direct I/O. Its writes then reach the daemon
straight from the writer's pages instead of being copied into the page cache first and out of
it again: one copy less per byte, a quarter more throughput for `dd` on a 2-core machine,
and no cache filled with data nobody has read yet. Such a handle cannot be read or mmap'ed
(it is write-only), so nothing else about it changes.

The cost is coherence. Other handles of the same file still use the page cache, and a page
they cached (the half-written last page, read while the file grows) would not see later
direct writes. So `FileContent.kernel_cached` records that the kernel may hold pages of the
file (a read was answered, or a cached handle wrote), and the first direct write after that
drops the file's cached pages before it is acknowledged. A new or just-truncated file has no
cached pages, which is why only those handles qualify. A handle the application opened with
O_DIRECT writes around the cache as well, whatever the file held: it counts as direct too.
(The kernel this was measured on, 6.18, also drops the pages a direct write covers by itself,
so tests/mount/test_coherence.py and test_odirect.py pass either way there; older kernels are
not known to, and the cost is one notification per write that follows a cached read.)
"""

import logging
import os

import pyfuse3
import trio

log = logging.getLogger("cagefs")


def qualifies(flags: int, fresh: bool) -> bool:
    """Whether a handle opened with `flags` writes around the page cache.

    `fresh`: the open created the file or truncated it, so the kernel holds none of its pages.
    """
    return fresh and flags & os.O_ACCMODE == os.O_WRONLY


def bypasses_cache(flags: int) -> bool:
    """An application's O_DIRECT handle writes around the page cache too: other handles'
    cached pages must be dropped after its writes, as after a direct_io handle's."""
    return bool(flags & os.O_DIRECT)


async def drop_cached_pages(inode: int) -> None:
    """Make the kernel forget the cached pages (and attributes) of `inode`.

    On a thread, and with no lock held: the kernel may first wait for a read of one of those
    pages that this event loop has still to answer.
    """
    try:
        await trio.to_thread.run_sync(pyfuse3.invalidate_inode, inode, False)
    except OSError as exc:  # ENOENT: the kernel has already forgotten the inode
        log.debug("invalidating inode %d: %s", inode, exc.strerror)
