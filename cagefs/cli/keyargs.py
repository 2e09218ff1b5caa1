"""Keys and passphrases from command-line arguments, shared by every verb that takes them.

- `load_recipients(recipients, recipient_files)`: `-r` strings and `-R` files -> Recipients.
- `load_identities(identity_files, passfile, ask)`: `-i` files (plain, or passphrase-encrypted
  age files as `age -p` makes them) and `--passfile` -> Identities. `ask(prompt) -> str` asks
  for a passphrase when one is needed and not given by `passfile` (usually
  `cagefs.store.keyring.prompt_passphrase`; None where nobody can answer, e.g. a daemon).

Passphrases come from a file or the terminal only, never from argv or the environment, where
other users and logs can see them.
"""

import io
import sys
from collections.abc import Callable, Sequence

from cagefs.age.armor import is_armored, unarmor
from cagefs.age.errors import AgeError, KeyFormatError, NoIdentityMatchError
from cagefs.age.file import decrypt_stream
from cagefs.age.header import VERSION_LINE, Stanza
from cagefs.age.keys import load_identity_file, parse_recipient, parse_recipients_file
from cagefs.age.recipients import Identity, Recipient
from cagefs.age.scrypt import STANZA_TYPE as SCRYPT
from cagefs.age.scrypt import ScryptIdentity
from cagefs.errors import CageError
from cagefs.store.keyring import AskPassphrase, get_passphrase


def load_recipients(recipients: Sequence[str], recipient_files: Sequence[str]) -> list[Recipient]:
    """Recipients from `-r` strings and `-R` files (`-` is stdin), in that order."""
    found = []
    for text in recipients:
        try:
            found.append(parse_recipient(text))
        except AgeError as exc:
            raise KeyFormatError(f"recipient {text[:80]!r}: {exc}") from None
    for path in recipient_files:
        found += parse_recipients_file(_read_text(path), path)
    return found


def load_identities(
    identity_files: Sequence[str],
    passfile: str | None,
    ask: AskPassphrase | None,
    *,
    with_passphrase: bool = False,
) -> list[Identity]:
    """Identities from `-i` files, plus a passphrase identity when `passfile` is given.

    With no identity files (or `with_passphrase`, for `-p`), a passphrase identity is added that
    calls `ask` only if a file turns out to be passphrase-encrypted, as `age -d` does.
    """
    passphrase = _passphrase_source(passfile, ask)
    identities: list[Identity] = []
    for path in identity_files:
        identities += _identity_file(path, passphrase)
    if passfile is not None or (ask is not None and (with_passphrase or not identity_files)):
        identities.append(_LazyScryptIdentity(lambda: passphrase("Enter passphrase: ")))
    if not identities:
        raise CageError("no identity given (use -i IDENTITY_FILE or --passfile FILE)")
    return identities


def _passphrase_source(passfile: str | None, ask: AskPassphrase | None) -> Callable[[str], bytes]:
    def passphrase(prompt: str) -> bytes:
        if passfile is None and ask is None:
            raise CageError("a passphrase is needed (use --passfile FILE)")
        return get_passphrase(passfile, ask, prompt)  # type: ignore[arg-type]

    return passphrase


def _identity_file(path: str, passphrase: Callable[[str], bytes]) -> list[Identity]:
    data = sys.stdin.buffer.read() if path == "-" else _read_bytes(path)
    if data.startswith(VERSION_LINE) or is_armored(data[:2048]):
        data = _decrypt_identity_file(data, path, passphrase)
    return load_identity_file(data, path, lambda: passphrase(f"Enter passphrase for {path}: "))


def _decrypt_identity_file(data: bytes, path: str, passphrase: Callable[[str], bytes]) -> bytes:
    """The text of an identity file that was itself encrypted with a passphrase (`age -p`)."""
    out: list[bytes] = []
    key = ScryptIdentity(passphrase(f"Enter passphrase for identity file {path}: "))
    try:
        decrypt_stream(unarmor(io.BytesIO(data)), out.append, [key])
    except NoIdentityMatchError:
        raise KeyFormatError(f"{path}: wrong passphrase for the encrypted identity file") from None
    except AgeError as exc:
        raise KeyFormatError(f"{path}: {exc}") from None
    return b"".join(out)


class _LazyScryptIdentity:
    """A passphrase identity that asks for the passphrase only when a file needs one."""

    def __init__(self, get: Callable[[], bytes]) -> None:
        self._get = get
        self._identity: ScryptIdentity | None = None

    def unwrap(self, stanzas: Sequence[Stanza]) -> bytes | None:
        if not any(s.type == SCRYPT for s in stanzas):
            return None
        if self._identity is None:
            self._identity = ScryptIdentity(self._get())
        return self._identity.unwrap(stanzas)

    def recipient(self) -> Recipient:
        raise CageError("a passphrase identity has no public recipient")


def _read_bytes(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _read_text(path: str) -> str:
    data = sys.stdin.buffer.read() if path == "-" else _read_bytes(path)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise KeyFormatError(f"{path}: not a recipients file (not text)") from None
