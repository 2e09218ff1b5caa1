"""Attributes the kernel sees: from the backing file, with sizes computed, never decrypted (I5).

A backing file's plaintext size follows from its length and its header length; header lengths
are cached by (inode, size, mtime) so `ls -l` of a large directory reads each header once.
"""

import logging
import os
from collections import OrderedDict
from typing import Protocol

import pyfuse3

from cagefs.age import CHUNK_SIZE, AgeError, plaintext_size, read_header_at
from cagefs.fs.inodes import Kind, Node
from cagefs.store.paths import open_file

log = logging.getLogger("cagefs")
ATTR_TIMEOUT = 1.0
_HEADER_CACHE_LIMIT = 100_000


class HeaderLengths:
    def __init__(self) -> None:
        self._lengths: OrderedDict[tuple[int, int, int, int], int] = OrderedDict()

    def plaintext_size(self, dir_fd: int, name: str, st: os.stat_result) -> int:
        """Plaintext size of backing file `name` in `dir_fd`; 0 (and a log line) for one that
        is not age."""
        key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        length = self._lengths.get(key)
        if length is None:
            length = self._read_length(dir_fd, name)
            self._lengths[key] = length
            if len(self._lengths) > _HEADER_CACHE_LIMIT:
                self._lengths.popitem(last=False)
        try:
            return plaintext_size(st.st_size - length) if length else 0
        except AgeError:
            return 0

    @staticmethod
    def _read_length(dir_fd: int, name: str) -> int:
        try:
            fd = open_file(dir_fd, name, noatime=True)  # a stat is no read of the file
        except OSError:
            return 0
        try:
            return read_header_at(fd).length
        except AgeError as exc:
            log.warning("%s: not a valid age file (%s)", name, exc)
            return 0
        finally:
            os.close(fd)


class StatLike(Protocol):
    st_mode: int
    st_nlink: int
    st_uid: int
    st_gid: int
    st_size: int
    st_atime_ns: int
    st_mtime_ns: int
    st_ctime_ns: int


def entry_attributes(node: Node, st: StatLike, size: int | None = None) -> pyfuse3.EntryAttributes:
    """The kernel's view of a node, from a backing stat or an open file's `Attributes`."""
    entry = pyfuse3.EntryAttributes()
    entry.st_ino = node.ino
    entry.generation = 0
    entry.entry_timeout = ATTR_TIMEOUT
    entry.attr_timeout = ATTR_TIMEOUT
    entry.st_mode = st.st_mode
    if node.path is None:
        entry.st_nlink = 0  # unlinked, or replaced by a rename, and still open
    else:
        entry.st_nlink = st.st_nlink if node.kind is Kind.DIR else node.nlink
    entry.st_uid = st.st_uid
    entry.st_gid = st.st_gid
    if node.kind is Kind.SPECIAL:
        assert isinstance(st, os.stat_result)  # a special file never has open content
        entry.st_rdev = st.st_rdev
    entry.st_size = size if size is not None else st.st_size
    entry.st_blksize = CHUNK_SIZE
    entry.st_blocks = -(-entry.st_size // 512)
    entry.st_atime_ns = st.st_atime_ns
    entry.st_mtime_ns = st.st_mtime_ns
    entry.st_ctime_ns = st.st_ctime_ns
    return entry
