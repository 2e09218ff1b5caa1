"""Check every backing file of a store, and give the files of an old store their proofs.

Each `NAME.age` file in the tree is decrypted and every chunk authenticated, and its proof of
origin checked (store/auth.py). `upgrade` first gives a store made before tamper evidence its
authentication key, then tags each untagged file that authenticates: a new version with the same
file key and payload and one more header stanza, written to `.cagefs/tmp/` and renamed over the
old one (I3). Each file is done on its own, so a run killed at any point is finished by running
it again: tagged files are skipped, and a stray temp is removed by the next upgrade or mount.
"""

import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from cagefs.age.errors import AgeError
from cagefs.age.file import read_header_at
from cagefs.age.header import Header
from cagefs.age.recipients import unwrap_file_key
from cagefs.age.stream import PayloadReader
from cagefs.store import Store
from cagefs.store.auth import AuthKey, Kind, Proof, proof_under
from cagefs.store.keyring import canary_proof, save_auth_key, write_canary
from cagefs.store.layout import META_DIR, plain_file_name
from cagefs.store.rewrap import BLOCK, rewrap_file


def give_auth_key(store: Store) -> AuthKey:
    """The store's authentication key, made now if the store predates it; the canary tagged.

    auth.age is written before anything is tagged under it, so a run killed here is resumed.
    """
    if store.auth is None:
        store.auth = AuthKey.generate()
        save_auth_key(store.root, store.auth, store.recipients)
    if canary_proof(store.root, store.identities, store.auth) is Proof.MISSING:
        write_canary(store.root, store.recipients, store.auth)
    return store.auth


TAGGED = "tagged now"  # check_file's answer for a file `upgrade` has just tagged
GONE = "removed meanwhile"  # a file a mount removed or renamed while the store was checked


def verify_store(
    store: Store, upgrade: bool, files: Iterable[str] | None = None
) -> Iterator[tuple[str, str | None]]:
    """(backing path relative to the store; problem, TAGGED, GONE or None) for each file in
    turn: `files`, or every backing file. Only reads unless `upgrade`: safe beside a mount."""
    key = give_auth_key(store) if upgrade else store.auth
    for relative in backing_files(store.root) if files is None else files:
        yield relative, check_file(store, relative, key, upgrade)


def check_file(store: Store, relative: str, key: AuthKey | None, upgrade: bool) -> str | None:
    """What is wrong with one backing file; with `upgrade`, an untagged one is tagged."""
    try:
        fd = os.open(store.root / relative, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return GONE
    except OSError as exc:
        return f"cannot be opened: {exc.strerror}"
    try:
        header = read_header_at(fd)
        file_key = unwrap_file_key(header, store.identities)
        authenticate_payload(PayloadReader(fd, header.length, file_key))
        proof = proof_under(key, header, file_key, Kind.FILE)
        if proof is Proof.MISSING and upgrade and key is not None:
            tag_file(store.root, relative, fd, header, file_key, key)
            return TAGGED
    except AgeError as exc:
        return f"cannot be decrypted and authenticated: {exc}"
    except OSError as exc:
        return f"cannot be {'tagged' if upgrade else 'read'}: {exc.strerror or exc}"
    finally:
        os.close(fd)
    return None if proof is Proof.VALID else proof.value


def authenticate_payload(reader: PayloadReader) -> None:
    """Decrypt every chunk (PayloadError on the first that fails); the plaintext is dropped."""
    if reader.size == 0:
        reader.read(0, 0)
        return
    buffer = memoryview(bytearray(min(BLOCK, reader.size)))
    for offset in range(0, reader.size, len(buffer)):
        reader.readinto(offset, buffer[: min(len(buffer), reader.size - offset)])


def tag_file(
    root: Path, relative: str, fd: int, header: Header, file_key: bytes, key: AuthKey
) -> None:
    """Replace the file by a version with the same key and payload and a proof (I3)."""
    rewrap_file(root, relative, fd, header, file_key, header.stanzas, key)


def backing_files(root: Path, relative: str = "") -> Iterator[str]:
    """Every backing file (`NAME.age`, a regular file) under root, in name order, as a path
    relative to root; `.cagefs/` and symlinks are not followed."""
    for entry in sorted(os.scandir(root / relative), key=lambda e: e.name):
        path = f"{relative}{entry.name}"
        if entry.is_dir(follow_symlinks=False):
            if path != META_DIR:
                yield from backing_files(root, f"{path}/")
        elif entry.is_file(follow_symlinks=False) and plain_file_name(entry.name):
            yield path
