"""Invariants not covered by a workload elsewhere: I2 (no nonce reuse, no in-place patching)."""

import os
from pathlib import Path

from cagefs.age import read_header_at
from cagefs.age.stream import NONCE_SIZE

from .helpers import Daemon


def backing_version(path: Path) -> tuple[bytes, bytes]:
    """(header stanza bodies, payload nonce) of a backing file."""
    fd = os.open(path, os.O_RDONLY)
    try:
        header = read_header_at(fd)
        nonce = os.pread(fd, NONCE_SIZE, header.length)
        return b"".join(s.body for s in header.stanzas), nonce
    finally:
        os.close(fd)


def test_every_version_is_a_whole_new_file_with_fresh_key_and_nonce(mounted: Daemon) -> None:
    """I2: edits never patch a backing file in place; each version has a new file key and
    nonce, so no (key, nonce) pair ever seals two plaintexts."""
    plain = mounted.mnt / "doc.txt"
    backing = mounted.store / "doc.txt.age"
    plain.write_bytes(b"a" * 200_000)
    seen = []
    for edit in range(4):
        with open(plain, "r+b") as f:
            f.seek(70_000 * edit)
            f.write(b"edit %d" % edit)
            f.flush()
            os.fsync(f.fileno())  # publishes this version before fsync returns
        seen.append(backing_version(backing))
    keys, nonces = zip(*seen, strict=True)
    assert len(set(keys)) == len(seen), "a file key's wrapping was reused"
    assert len(set(nonces)) == len(seen), "a payload nonce was reused"
    mounted.assert_store_matches()
