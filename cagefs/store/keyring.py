"""The store's keys: its passphrase-protected identity, its authentication key, and the canary.

`.cagefs/identity.age` is an identity file encrypted to a passphrase (scrypt), used when init
generated the store's key. `.cagefs/auth.age` holds the authentication key that tags every file
the store writes (store/auth.py), encrypted to every store recipient. `.cagefs/canary.age` is a
fixed text encrypted to every store recipient and tagged: a mount decrypts it first, so a wrong
key is refused at once with one line (I9) instead of failing file by file later, and an
auth.age that does not belong to the store is refused too.
"""

import os
from collections.abc import Sequence
from pathlib import Path

from cagefs.age.errors import AgeError, KeyFormatError, NoIdentityMatchError
from cagefs.age.file import ExtraStanzas, HeaderCheck, open_file, read_header_at, start_file
from cagefs.age.keys import load_identity_file
from cagefs.age.recipients import Identity, Recipient
from cagefs.age.scrypt import DEFAULT_LOG_N, ScryptRecipient
from cagefs.errors import CageError, WrongKeyError
from cagefs.secrets import WrongPassphraseError, decrypt_identity_file
from cagefs.store.atomic import replace_atomically
from cagefs.store.auth import STANZA_TYPE, AuthKey, Kind, Proof
from cagefs.store.layout import AUTH_FILE, CANARY_FILE, IDENTITY_FILE

CANARY_TEXT = b"cagefs canary v1: the key that reads this file reads this store.\n"


def write_age_file(
    root: Path,
    relative: str,
    plaintext: bytes,
    recipients: Sequence[Recipient],
    extra: ExtraStanzas | None = None,
) -> None:
    with replace_atomically(root, relative) as f:
        writer = start_file(f.write, recipients, extra)
        writer.write(plaintext)
        writer.close()


def read_age_file(
    path: Path, identities: Sequence[Identity], check: HeaderCheck | None = None
) -> bytes:
    fd = os.open(path, os.O_RDONLY)
    try:
        opened = open_file(fd, identities, check)
        return opened.reader.read(0, opened.size)
    finally:
        os.close(fd)


def tagger(auth: AuthKey, kind: Kind) -> ExtraStanzas:
    return lambda file_key, stanzas: [auth.tag(file_key, stanzas, kind)]


def save_identity(
    root: Path, identity_text: str, passphrase: bytes, log_n: int = DEFAULT_LOG_N
) -> None:
    recipient = ScryptRecipient(passphrase, log_n)
    write_age_file(root, IDENTITY_FILE, identity_text.encode(), [recipient])


def unlock_identity(root: Path, passphrase: bytes) -> list[Identity]:
    """The identities kept in identity.age; a passphrase that does not open it is refused.

    identity.age is an `age -p` identity file, so it is opened like one given with -i; only a
    passphrase-encrypted one is accepted here, since the store's secret is never kept in clear.
    """
    text = identity_text(root, passphrase)
    try:
        return load_identity_file(text.encode(), str(root / IDENTITY_FILE))
    except AgeError as exc:
        raise CageError(f"damaged store identity: {exc}") from None


def identity_text(root: Path, passphrase: bytes) -> str:
    """identity.age's text (secret); a passphrase that does not open it is refused."""
    path = root / IDENTITY_FILE
    if not path.is_file():
        raise CageError(
            f"store {root} keeps no identity of its own (made with --identity): protect that "
            "identity file itself (age -p, or ssh-keygen -p)"
        )
    try:
        return decrypt_identity_file(path.read_bytes(), str(path), passphrase).decode()
    except WrongPassphraseError:
        raise WrongKeyError(f"wrong passphrase for store {root}") from None
    except (AgeError, UnicodeDecodeError) as exc:
        raise CageError(f"damaged store identity: {exc}") from None


def write_canary(root: Path, recipients: Sequence[Recipient], auth: AuthKey) -> None:
    write_age_file(root, CANARY_FILE, CANARY_TEXT, recipients, tagger(auth, Kind.CANARY))


def canary_proof(root: Path, identities: Sequence[Identity], auth: AuthKey) -> Proof:
    proofs: list[Proof] = []
    read_age_file(
        root / CANARY_FILE, identities, lambda h, k: proofs.append(auth.proof(h, k, Kind.CANARY))
    )
    return proofs[0]


def canary_key_id(root: Path) -> str | None:
    """The public id of the key the canary's proof is under (readable without any secret)."""
    fd = os.open(root / CANARY_FILE, os.O_RDONLY | os.O_CLOEXEC)
    try:
        header = read_header_at(fd)
    except AgeError as exc:
        raise CageError(f"{root / CANARY_FILE} is damaged: {exc}") from None
    finally:
        os.close(fd)
    proofs = [s for s in header.stanzas if s.type == STANZA_TYPE and len(s.args) == 1]
    return proofs[0].args[0] if proofs else None


def save_auth_key(root: Path, auth: AuthKey, recipients: Sequence[Recipient]) -> None:
    """auth.age: the key encrypted to every recipient, so each identity can write the store."""
    write_age_file(root, AUTH_FILE, auth.text(), recipients)


def load_auth_key(root: Path, identities: Sequence[Identity]) -> AuthKey | None:
    """The store's authentication key; None for a store made before tamper evidence.

    The canary (already read with these identities) must carry a valid proof under it, else
    auth.age was replaced or damaged and nothing would be checked against the right key. An
    untagged canary is accepted: a store upgrade tags it right after writing auth.age.
    """
    if not (root / AUTH_FILE).exists():
        return None
    try:
        text = read_age_file(root / AUTH_FILE, identities)
        auth = AuthKey.from_text(text)
    except (AgeError, CageError) as exc:
        raise CageError(f"{root / AUTH_FILE} is damaged: {exc}") from None
    proof = canary_proof(root, identities, auth)
    if proof not in (Proof.VALID, Proof.MISSING):
        raise CageError(
            f"{root / AUTH_FILE} does not belong to this store, the canary under it is "
            f"{proof.value.split(' (')[0]}: auth.age was replaced or damaged"
        )
    return auth


def check_canary(root: Path, identities: Sequence[Identity]) -> None:
    """Refuse identities that cannot read the store before anything is served (I9)."""
    try:
        text = read_age_file(root / CANARY_FILE, identities)
    except NoIdentityMatchError:
        raise WrongKeyError(f"this identity cannot read store {root}") from None
    except KeyFormatError as exc:  # a key unlocked only now (OpenSSH): the key, not the canary
        raise WrongKeyError(str(exc)) from None
    except AgeError as exc:
        raise CageError(f"{root / CANARY_FILE} is damaged: {exc}") from None
    if text != CANARY_TEXT:
        raise CageError(f"{root / CANARY_FILE} is damaged: unexpected content")
