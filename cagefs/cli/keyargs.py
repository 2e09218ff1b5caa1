"""Keys and passphrases from command-line arguments, shared by every verb that takes them.

- `load_recipients(recipients, recipient_files)`: `-r` strings and `-R` files -> Recipients.
- `load_identities(identity_files, passfile)`: `-i` files -> Identities. A protected file (an
  identity file encrypted with `age -p`, or a passphrase-protected OpenSSH key) is unlocked
  with the first line of `passfile`, or a passphrase asked on the terminal.
- `passphrase_identity(passfile)`: the identity for files encrypted to a passphrase (`-p`).
- `add_identity_arguments(parser)` and `open_store_from(args)`: a verb's `-i`/`--passfile`, and
  the store they unlock.
"""

import argparse
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from cagefs.age.errors import AgeError, KeyFormatError
from cagefs.age.header import Stanza
from cagefs.age.keys import parse_recipient, parse_recipients_file
from cagefs.age.recipients import Identity, Recipient
from cagefs.age.scrypt import STANZA_TYPE as SCRYPT
from cagefs.age.scrypt import ScryptIdentity
from cagefs.errors import CageError
from cagefs.secrets import Passphrase, WrongPassphraseError, identities_in_file, passphrase_from

if TYPE_CHECKING:
    from cagefs.store import Store


def add_identity_arguments(parser: argparse.ArgumentParser) -> None:
    """`-i FILE` and `--passfile FILE`, as every verb that needs the store's secret takes them."""
    parser.add_argument(
        "-i",
        "--identity",
        action="append",
        default=[],
        metavar="IDENTITY_FILE",
        help="unlock with this identity file instead of the store's passphrase",
    )
    parser.add_argument(
        "--passfile",
        metavar="FILE",
        help="read the passphrase from FILE's first line: the store's own, or with -i the one "
        "protecting the identity file (age -p file or OpenSSH key)",
    )


def open_store_from(
    args: argparse.Namespace, *, accept_untagged: bool = False, check_origin: bool = True
) -> "Store":
    """`args.store` unlocked with `-i`/`--passfile` (without -i, the store's own identity.age),
    or, given `--auth-key-file`, opened to write only (no identity). With `check_origin`, a
    store made before tamper evidence is refused unless `accept_untagged`."""
    from cagefs.store import open_encrypt_only, open_store
    from cagefs.store.auth import check_can_mount

    if getattr(args, "auth_key_file", None):
        with open(args.auth_key_file, "rb") as f:
            return open_encrypt_only(args.store, f.read())
    store = open_store(args.store, load_identities(args.identity, args.passfile), args.passfile)
    if check_origin:
        check_can_mount(args.store, store.auth, accept_untagged)
    return store


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


def load_identities(identity_files: Sequence[str], passfile: str | None) -> list[Identity]:
    """Identities from `-i` files (`-` is stdin); `passfile` unlocks the protected ones."""
    passphrase = passphrase_from(passfile)
    identities: list[Identity] = []
    for path in identity_files:
        identities += identities_in_file(_read_bytes(path), path, passphrase)
    return identities


def passphrase_identity(passfile: str | None) -> Identity:
    """An identity for passphrase-encrypted files, which asks only when a file needs it."""
    return _LazyScryptIdentity(passphrase_from(passfile))


class _LazyScryptIdentity:
    """A passphrase identity that asks for the passphrase only when a file needs one."""

    def __init__(self, passphrase: Passphrase) -> None:
        self._passphrase = passphrase
        self._identity: ScryptIdentity | None = None

    def unwrap(self, stanzas: Sequence[Stanza]) -> bytes | None:
        if not any(s.type == SCRYPT for s in stanzas):
            return None
        if self._identity is None:
            self._identity = ScryptIdentity(self._passphrase("Enter passphrase: "))
        file_key = self._identity.unwrap(stanzas)
        if file_key is None:  # a passphrase file has one stanza: no other identity can match
            raise WrongPassphraseError("wrong passphrase: it does not decrypt this file")
        return file_key

    def recipient(self) -> Recipient:
        raise CageError("a passphrase identity has no public recipient")


def _read_bytes(path: str) -> bytes:
    if path == "-":
        return sys.stdin.buffer.read()
    with open(path, "rb") as f:
        return f.read()


def _read_text(path: str) -> str:
    try:
        return _read_bytes(path).decode("utf-8")
    except UnicodeDecodeError:
        raise KeyFormatError(f"{path}: not a recipients file (not text)") from None
