"""The store's keys: its passphrase-protected identity and the canary that proves a key fits.

`.cagefs/identity.age` is an identity file encrypted to a passphrase (scrypt), used when init
generated the store's key. `.cagefs/canary.age` is a fixed text encrypted to every store
recipient: a mount decrypts it first, so a wrong key is refused at once with one line (I9)
instead of failing file by file later.
"""

import getpass
import os
from collections.abc import Callable, Sequence
from pathlib import Path

from cagefs.age.errors import AgeError, NoIdentityMatchError
from cagefs.age.file import open_file, start_file
from cagefs.age.keys import parse_identity_file
from cagefs.age.recipients import Identity, Recipient
from cagefs.age.scrypt import DEFAULT_LOG_N, ScryptIdentity, ScryptRecipient
from cagefs.errors import CageError
from cagefs.store.atomic import replace_atomically
from cagefs.store.layout import CANARY_FILE, IDENTITY_FILE

CANARY_TEXT = b"cagefs canary v1: the key that reads this file reads this store.\n"
AskPassphrase = Callable[[str], str]


def write_age_file(
    root: Path, relative: str, plaintext: bytes, recipients: Sequence[Recipient]
) -> None:
    with replace_atomically(root, relative) as f:
        writer = start_file(f.write, recipients)
        writer.write(plaintext)
        writer.close()


def read_age_file(path: Path, identities: Sequence[Identity]) -> bytes:
    fd = os.open(path, os.O_RDONLY)
    try:
        opened = open_file(fd, identities)
        return opened.reader.read(0, opened.size)
    finally:
        os.close(fd)


def save_identity(
    root: Path, identity_text: str, passphrase: bytes, log_n: int = DEFAULT_LOG_N
) -> None:
    recipient = ScryptRecipient(passphrase, log_n)
    write_age_file(root, IDENTITY_FILE, identity_text.encode(), [recipient])


def unlock_identity(root: Path, passphrase: bytes) -> list[Identity]:
    """The identities kept in identity.age; a passphrase that does not open it is refused."""
    try:
        text = read_age_file(root / IDENTITY_FILE, [ScryptIdentity(passphrase)])
    except NoIdentityMatchError:
        raise CageError(f"wrong passphrase for store {root}") from None
    except AgeError as exc:
        raise CageError(f"{root / IDENTITY_FILE} is damaged: {exc}") from None
    return parse_identity_file(text.decode(), str(root / IDENTITY_FILE))


def write_canary(root: Path, recipients: Sequence[Recipient]) -> None:
    write_age_file(root, CANARY_FILE, CANARY_TEXT, recipients)


def check_canary(root: Path, identities: Sequence[Identity]) -> None:
    """Refuse identities that cannot read the store before anything is served (I9)."""
    try:
        text = read_age_file(root / CANARY_FILE, identities)
    except NoIdentityMatchError:
        raise CageError(f"this identity cannot read store {root}") from None
    except AgeError as exc:
        raise CageError(f"{root / CANARY_FILE} is damaged: {exc}") from None
    if text != CANARY_TEXT:
        raise CageError(f"{root / CANARY_FILE} is damaged: unexpected content")


def read_passfile(path: str) -> bytes:
    """The first line of the file, without its newline (as gocryptfs -passfile does)."""
    with open(path, "rb") as f:
        passphrase = f.readline().rstrip(b"\r\n")
    if not passphrase:
        raise CageError(f"{path}: the passphrase file is empty")
    return passphrase


def prompt_passphrase(prompt: str) -> str:
    """Ask on the terminal, never on stdin: a mount in a pipeline must not read its input."""
    try:
        os.close(os.open("/dev/tty", os.O_RDWR | os.O_NOCTTY))
    except OSError:
        raise CageError("no terminal to ask the passphrase on: give --passfile FILE") from None
    return getpass.getpass(prompt)


def get_passphrase(
    passfile: str | None, ask: AskPassphrase, prompt: str, confirm: bool = False
) -> bytes:
    if passfile:
        return read_passfile(passfile)
    passphrase = ask(prompt)
    if not passphrase:
        raise CageError("the passphrase is empty")
    if confirm and ask("Confirm passphrase: ") != passphrase:
        raise CageError("the passphrases do not match")
    return passphrase.encode()
