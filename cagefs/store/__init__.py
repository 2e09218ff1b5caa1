"""A backing store on disk: create one (`init_store`) or open and unlock one (`open_store`)."""

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cagefs.age.keys import identity_file_text, parse_recipient
from cagefs.age.recipients import Identity, Recipient
from cagefs.age.scrypt import DEFAULT_LOG_N
from cagefs.age.x25519 import X25519Identity
from cagefs.errors import CageError, NotAStoreError, UsageError
from cagefs.secrets import AskPassphrase, get_passphrase, prompt_passphrase
from cagefs.store.auth import AuthKey
from cagefs.store.config import StoreConfig
from cagefs.store.keyring import (
    canary_key_id,
    check_canary,
    load_auth_key,
    save_auth_key,
    save_identity,
    unlock_identity,
    write_canary,
)
from cagefs.store.layout import (
    CONFIG_FILE,
    IDENTITY_FILE,
    KEYCHANGE_FILE,
    META_DIR,
    create_meta_dirs,
)
from cagefs.store.lock import lock_store
from cagefs.store.paths import fsync_dir


@dataclass
class Store:
    root: Path
    config: StoreConfig
    identities: list[Identity]
    recipients: list[Recipient]
    auth: AuthKey | None  # None: a store made before tamper evidence (`cagefs verify --upgrade`)


def is_store(root: Path) -> bool:
    return (root / CONFIG_FILE).is_file()


def init_store(
    root: Path,
    recipients: Sequence[Recipient] = (),
    identities: Sequence[Identity] | None = None,
    passphrase: bytes | None = None,
    log_n: int = DEFAULT_LOG_N,
) -> Store:
    """Create a store encrypted to `recipients` plus the recipients of its identities.

    Without `identities`, a fresh X25519 identity is generated and kept in identity.age under
    `passphrase`; with them, the secret stays wherever the user keeps it. A fresh
    authentication key goes to auth.age, and tags the canary. config.toml is written last, so a
    store that is half made is never taken for ours.
    """
    check_can_init(root)
    if identities is None:
        if passphrase is None:
            raise CageError("a passphrase is needed to protect the generated identity")
        generated = X25519Identity.generate()
        identities = [generated]
    all_recipients = [identity.recipient() for identity in identities] + list(recipients)
    texts = list(dict.fromkeys(str(r) for r in all_recipients))
    config = StoreConfig(recipients=texts)
    config.validate(root / CONFIG_FILE)
    root.mkdir(parents=True, exist_ok=True)
    create_meta_dirs(root)
    with lock_store(root, "init"):
        check_can_init(root)  # again, under the lock: another init may have finished meanwhile
        if passphrase is not None:
            save_identity(root, identity_file_text(generated), passphrase, log_n)
        auth = AuthKey.generate()
        save_auth_key(root, auth, all_recipients)
        write_canary(root, all_recipients, auth)
        config.save(root)
        fsync_dir(root)
    return Store(root, config, list(identities), [parse_recipient(text) for text in texts], auth)


def check_can_init(root: Path) -> None:
    if is_store(root):
        raise CageError(f"{root} is already a cagefs store")
    if root.exists() and not root.is_dir():
        raise CageError(f"{root} exists and is not a directory")
    # An empty directory, or one holding only what an interrupted init left, may be used.
    if root.is_dir() and set(os.listdir(root)) - {META_DIR}:
        raise CageError(f"{root} is not empty and is not a cagefs store")


def open_store(
    root: Path,
    identities: Sequence[Identity] = (),
    passfile: str | None = None,
    ask_passphrase: AskPassphrase = prompt_passphrase,
) -> Store:
    """Open a store and prove the key fits (canary), or raise one clear CageError.

    With `identities` (from -i files), those are used; without, the store's own identity.age is
    unlocked with the passphrase from `passfile` or `ask_passphrase`. The authentication key is
    loaded too (None for a store made before tamper evidence: the caller decides).
    """
    check_store(root)
    check_no_key_change(root)
    store = unlock_store(root, identities, passfile, ask_passphrase)
    store.auth = load_auth_key(root, store.identities)
    return store


def unlock_store(
    root: Path,
    identities: Sequence[Identity] = (),
    passfile: str | None = None,
    ask_passphrase: AskPassphrase = prompt_passphrase,
) -> Store:
    """`open_store` without the authentication key (`auth` is None): for the key verbs, which
    load it themselves, also in the middle of a key change (store/keychange.py)."""
    check_store(root)
    config = StoreConfig.load(root)
    recipients = [parse_recipient(text) for text in config.recipients]
    keys = list(identities) or _unlock(root, passfile, ask_passphrase)
    check_canary(root, keys)
    return Store(root, config, keys, recipients, None)


def check_no_key_change(root: Path) -> None:
    """A store mid-change has files under two recipient sets and two authentication keys:
    only the key verbs, which finish the change, may use it."""
    if (root / KEYCHANGE_FILE).exists():
        raise CageError(
            f"a key change of {root} was interrupted: run the same `cagefs recipients` or "
            f"`cagefs rekey` command again to finish it"
        )


def open_encrypt_only(root: Path, auth_key_text: bytes) -> Store:
    """A store for a mount that writes but cannot read: its recipients and the authentication
    key given (exported with `cagefs recipients export-auth-key`), no identity at all.

    Without an identity neither the canary nor auth.age can be opened, so the key is checked
    against the canary's public key id: a key of another store is refused at once.
    """
    check_store(root)
    check_no_key_change(root)
    config = StoreConfig.load(root)
    try:
        auth = AuthKey.from_text(auth_key_text)
    except CageError:
        raise CageError("not a cagefs authentication key file") from None
    if canary_key_id(root) != auth.key_id:
        raise CageError(f"this authentication key is not the one of store {root}")
    recipients = [parse_recipient(text) for text in config.recipients]
    return Store(root, config, [], recipients, auth)


def check_store(root: Path) -> None:
    """Refuse a path that is not a store, before anything is asked or locked."""
    if not root.exists():
        raise NotAStoreError(f"{root}: no such store")
    if not is_store(root):
        raise NotAStoreError(f"{root} is not a cagefs store (no {CONFIG_FILE})")


def on_read_only_filesystem(root: Path) -> bool:
    """Whether nothing can be written under `root` (a read-only mount, or a read-only bind)."""
    return bool(os.statvfs(root).f_flag & os.ST_RDONLY)


def _unlock(root: Path, passfile: str | None, ask: AskPassphrase) -> list[Identity]:
    if not (root / IDENTITY_FILE).is_file():
        raise UsageError(f"store {root} keeps no identity of its own: give -i IDENTITY_FILE")
    passphrase = get_passphrase(passfile, ask, f"Passphrase for store {root}: ")
    return unlock_identity(root, passphrase)
