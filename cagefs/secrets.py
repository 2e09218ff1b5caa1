"""How a secret gets from the user to an Identity: passphrases and identity files.

One place for both the command line (`-i`, `-p`, `--passfile`) and the store (its own
identity.age is an identity file encrypted with a passphrase, exactly as `age -p` makes one),
so that the store and the CLI never depend on each other for it.

Passphrases come from a file or the terminal only, never from argv or the environment, where
other users and logs can see them.
"""

import getpass
import io
import os
from collections.abc import Callable

from cagefs.age.armor import is_armored, unarmor
from cagefs.age.errors import AgeError, KeyFormatError, NoIdentityMatchError
from cagefs.age.file import decrypt_stream
from cagefs.age.header import VERSION_LINE
from cagefs.age.keys import load_identity_file
from cagefs.age.recipients import Identity
from cagefs.age.scrypt import ScryptIdentity
from cagefs.errors import CageError, WrongKeyError

AskPassphrase = Callable[[str], str]  # prompt -> what the user typed
Passphrase = Callable[[str], bytes]  # prompt -> a passphrase, from wherever it comes


class WrongPassphraseError(WrongKeyError):
    """The passphrase does not open a passphrase-encrypted identity file."""


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
    """The first line of `passfile` if given, else what the user types at `prompt`."""
    if passfile:
        return read_passfile(passfile)
    passphrase = ask(prompt)
    if not passphrase:
        raise CageError("the passphrase is empty")
    if confirm and ask("Confirm passphrase: ") != passphrase:
        raise CageError("the passphrases do not match")
    return passphrase.encode()


def passphrase_from(passfile: str | None, ask: AskPassphrase = prompt_passphrase) -> Passphrase:
    """A passphrase source that reads `passfile` or asks, only when it is called."""
    return lambda prompt: get_passphrase(passfile, ask, prompt)


def identities_in_file(data: bytes, name: str, passphrase: Passphrase) -> list[Identity]:
    """The identities in an identity file's bytes: age identity lines or an OpenSSH key, either
    of them possibly encrypted with a passphrase (binary or armored `age -p` output, or an
    OpenSSH key's own encryption). `passphrase` is called only for what is encrypted.
    """
    if data.startswith(VERSION_LINE) or is_armored(data[:2048]):
        key = passphrase(f"Enter passphrase for identity file {name}: ")
        data = decrypt_identity_file(data, name, key)
    return load_identity_file(data, name, lambda: passphrase(f"Enter passphrase for {name}: "))


def decrypt_identity_file(data: bytes, name: str, passphrase: bytes) -> bytes:
    """The text of an identity file that was itself encrypted with a passphrase (`age -p`)."""
    out = bytearray()
    try:
        decrypt_stream(unarmor(io.BytesIO(data)), out.extend, [ScryptIdentity(passphrase)])
    except NoIdentityMatchError:
        raise WrongPassphraseError(
            f"{name}: wrong passphrase for the encrypted identity file"
        ) from None
    except AgeError as exc:
        raise KeyFormatError(f"{name}: {exc}") from None
    return bytes(out)
