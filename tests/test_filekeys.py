"""store/filekeys.py: a file key is remembered by the exact stanzas that wrap it, so an entry
can never answer for another header (a rewritten, replaced or planted file)."""

import os
from collections.abc import Sequence

from cagefs.age import X25519Identity, open_file, start_file
from cagefs.age.header import Stanza
from cagefs.age.recipients import Recipient
from cagefs.store.filekeys import FileKeys


class Counting:
    """A real identity that counts the unwraps it is asked for."""

    def __init__(self, identity: X25519Identity) -> None:
        self.identity = identity
        self.unwraps = 0

    def unwrap(self, stanzas: Sequence[Stanza]) -> bytes | None:
        self.unwraps += 1
        return self.identity.unwrap(stanzas)

    def recipient(self) -> Recipient:
        return self.identity.recipient()


def _age_file(tmp_path, name: str, recipient: Recipient, data: bytes, keys=None) -> int:
    path = tmp_path / name
    with open(path, "wb") as f:

        def remember(file_key: bytes, stanzas: Sequence[Stanza]) -> list[Stanza]:
            if keys is not None:
                keys.remember(stanzas, file_key)
            return []

        writer = start_file(f.write, [recipient], remember)
        writer.write(data)
        writer.close()
    return os.open(path, os.O_RDONLY)


def test_a_key_is_unwrapped_once_per_header(tmp_path) -> None:
    identity = Counting(X25519Identity.generate())
    keys = FileKeys([identity])
    fd = _age_file(tmp_path, "a.age", identity.recipient(), b"one")
    for _ in range(3):
        assert open_file(fd, [keys]).reader.read(0, 10) == b"one"
    assert identity.unwraps == 1, "the key should be unwrapped once, then remembered"


def test_a_rewritten_file_is_never_given_the_old_key(tmp_path) -> None:
    identity = Counting(X25519Identity.generate())
    keys = FileKeys([identity])
    for n, data in enumerate([b"first", b"second", b"third"]):
        fd = _age_file(tmp_path, f"v{n}.age", identity.recipient(), data)
        assert open_file(fd, [keys]).reader.read(0, 10) == data
    assert identity.unwraps == 3 and len(keys) == 3


def test_keys_of_files_written_here_need_no_unwrap(tmp_path) -> None:
    identity = Counting(X25519Identity.generate())
    keys = FileKeys([identity])
    fd = _age_file(tmp_path, "new.age", identity.recipient(), b"mine", keys)
    assert open_file(fd, [keys]).reader.read(0, 10) == b"mine"
    assert identity.unwraps == 0


def test_the_cache_is_bounded(tmp_path) -> None:
    identity = Counting(X25519Identity.generate())
    keys = FileKeys([identity], limit=2)
    fds = [_age_file(tmp_path, f"{n}.age", identity.recipient(), b"x", keys) for n in range(3)]
    assert len(keys) == 2
    assert open_file(fds[0], [keys]).reader.read(0, 1) == b"x"  # forgotten: unwrapped again
    assert identity.unwraps == 1


def test_stanzas_for_another_identity_are_not_answered(tmp_path) -> None:
    mine, other = X25519Identity.generate(), X25519Identity.generate()
    keys = FileKeys([mine])
    fd = _age_file(tmp_path, "theirs.age", other.recipient(), b"secret")
    header_stanzas = open_file(fd, [other]).header.stanzas
    assert keys.unwrap(header_stanzas) is None
