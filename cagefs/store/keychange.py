"""Change who can read a store: add or remove recipients, rekey every file, rotate the
authentication key. Resumable after a crash or `kill -9` at any point.

A key change is a `Plan`: the target recipient set, what each file needs (a new header for the
same file key, or a fresh file key: `Action`), and whether the authentication key is rotated
(always when a recipient is removed or the store is rekeyed: a removed recipient knows the old
one). It is made durable before any file is touched:

1. with rotation, the new authentication key goes to `.cagefs/auth-next.age`, encrypted to the
   target recipients;
2. the plan goes to `.cagefs/keychange.json` (atomically). From here on, the store is mid-change:
   `open_store` (a mount, verify) refuses it until a key verb has finished the plan;
3. each backing file is replaced on its own (I3, store/rewrap.py), unless it is already done:
   with rotation, a file is done when it carries a valid proof under the new key; without (an
   added recipient), when its header has as many stanzas of each type as the target set makes;
4. the canary and auth.age are written for the target set, config.toml lists it, and the plan
   and then auth-next.age are removed.

Running any key verb again after a crash finds the plan and finishes it: files done are
skipped, the rest are done, nothing is doubled or lost, and a file is never left readable only
by a key the change removed. A file that was not the store's (no valid proof under the old key)
or cannot be read is never given a proof: it is listed as a problem and left as it is.
"""

import contextlib
import enum
import json
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from cagefs.age.errors import AgeError
from cagefs.age.file import read_header_at
from cagefs.age.header import Header, Stanza
from cagefs.age.keys import parse_recipient
from cagefs.age.recipients import Identity, Recipient, new_file_key, unwrap_file_key, wrap_file_key
from cagefs.age.stream import PayloadReader
from cagefs.errors import CageError
from cagefs.store.atomic import replace_atomically
from cagefs.store.auth import AuthKey, Kind, Proof
from cagefs.store.keyring import read_age_file, save_auth_key, write_age_file, write_canary
from cagefs.store.layout import AUTH_FILE, CANARY_FILE, KEYCHANGE_FILE, META_DIR, NEXT_AUTH_FILE
from cagefs.store.links import LinkIndex
from cagefs.store.paths import fsync_dir
from cagefs.store.rewrap import Reencrypter, recipient_stanzas, rewrap_file
from cagefs.store.verify import backing_files

PLAN_FILE = KEYCHANGE_FILE


class Action(enum.Enum):
    REWRAP = "rewrap"  # a new header for the same file key: the payload is copied
    REKEY = "rekey"  # a fresh file key: the payload is decrypted and encrypted again


@dataclass(frozen=True)
class Plan:
    recipients: tuple[str, ...]  # the target set, as config.toml will list it
    action: Action
    rotate_auth: bool

    def save(self, root: Path) -> None:
        text = {
            "recipients": list(self.recipients),
            "action": self.action.value,
            "rotate_auth": self.rotate_auth,
        }
        with replace_atomically(root, PLAN_FILE) as f:
            f.write(json.dumps(text, indent=1).encode() + b"\n")

    @classmethod
    def load(cls, root: Path) -> "Plan | None":
        """The unfinished key change, if there is one."""
        try:
            data = json.loads((root / PLAN_FILE).read_bytes())
            return cls(tuple(data["recipients"]), Action(data["action"]), data["rotate_auth"])
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError):
            raise CageError(f"{root / PLAN_FILE} is damaged") from None


def canonical(recipients: Sequence[str]) -> list[str]:
    """Recipient lines in the one form config.toml keeps (parsed and printed), in order,
    without duplicates."""
    return list(dict.fromkeys(str(parse_recipient(text)) for text in recipients))


def check_target(recipients: Sequence[str], identities: Sequence[Identity]) -> list[Recipient]:
    """The target set must be usable (age's mixing rules) and readable by the identities doing
    the change: a change that locked its own key out could never be resumed."""
    if not recipients:
        raise CageError("a store needs at least one recipient")
    parsed = [parse_recipient(text) for text in recipients]
    wrap_file_key(new_file_key(), parsed)  # raises for mixes age forbids (pq with classic)
    mine = {_recipient_text(identity) for identity in identities}
    if not mine & set(recipients):
        raise CageError(
            "the identity doing this change would not be a recipient afterwards: run it with an "
            "identity that stays (-i FILE)"
        )
    return parsed


def _recipient_text(identity: Identity) -> str | None:
    try:
        return str(identity.recipient())
    except CageError:
        return None


def begin(root: Path, plan: Plan) -> None:
    """Make the change durable before any file is touched (see the module's steps 1-2)."""
    if plan.rotate_auth:
        target = [parse_recipient(text) for text in plan.recipients]
        write_age_file(root, NEXT_AUTH_FILE, AuthKey.generate().text(), target)
    else:  # one a crash left after its plan was done
        with contextlib.suppress(FileNotFoundError):
            os.unlink(root / NEXT_AUTH_FILE)
    plan.save(root)


@dataclass
class Keys:
    """The authentication keys of a change: the store's, and the one files get."""

    old: AuthKey
    new: AuthKey


def load_keys(root: Path, plan: Plan, identities: Sequence[Identity]) -> Keys:
    """The keys for a started plan. The canary must carry a valid proof under one of them (it
    is retagged with the new key at the end, before auth.age is replaced), else auth.age is
    not this store's."""
    old = _read_auth(root, AUTH_FILE, identities)
    new = _read_auth(root, NEXT_AUTH_FILE, identities) if plan.rotate_auth else old
    proofs: list[Proof] = []

    def check(header: Header, file_key: bytes) -> None:
        proofs.extend(key.proof(header, file_key, Kind.CANARY) for key in (old, new))

    read_age_file(root / CANARY_FILE, identities, check)
    if Proof.VALID not in proofs and Proof.MISSING not in proofs:
        raise CageError(f"{root / AUTH_FILE} does not belong to this store: the canary's proof")
    return Keys(old, new)


def _read_auth(root: Path, relative: str, identities: Sequence[Identity]) -> AuthKey:
    if not (root / relative).exists():
        raise CageError(
            f"store {root} has no authentication key (made before tamper evidence): "
            f"run `cagefs verify --upgrade {root}` first"
        )
    try:
        return AuthKey.from_text(read_age_file(root / relative, identities))
    except AgeError as exc:
        raise CageError(f"{root / relative} is damaged: {exc}") from None


Progress = Callable[[str, int], None]  # (backing path, bytes) after each file


def run(
    root: Path,
    plan: Plan,
    identities: Sequence[Identity],
    config_save: Callable[[list[str]], None],
    progress: Progress,
) -> Iterator[tuple[str, str]]:
    """Carry out a started plan; yields (backing path, problem) for each file left as it is."""
    keys = load_keys(root, plan, identities)
    target = [parse_recipient(text) for text in plan.recipients]
    rekey = Reencrypter() if plan.action is Action.REKEY else None  # starts sealer processes
    change = _Change(root, plan, keys, target, identities, rekey)
    try:
        for relative in backing_files(root):
            size = _size(root / relative)
            problem = change.file(relative)
            if problem:
                yield relative, problem
            progress(relative, size)
    finally:
        if rekey is not None:
            rekey.close()  # every file replaced before the plan may end
    _finish(root, plan, keys, target, config_save)


def _size(path: Path) -> int:
    try:
        return os.lstat(path).st_size
    except OSError:
        return 0


def _links(path: Path) -> int:
    try:
        return os.lstat(path).st_nlink
    except OSError:
        return 1


def _shape(stanzas: Sequence[Stanza]) -> list[tuple[str, int]]:
    return sorted((s.type, len(s.args)) for s in stanzas)


@dataclass
class _Change:
    root: Path
    plan: Plan
    keys: Keys
    target: Sequence[Recipient]
    identities: Sequence[Identity]
    reencrypter: Reencrypter | None  # for Action.REKEY

    def __post_init__(self) -> None:
        self.done_shape = _shape(wrap_file_key(new_file_key(), self.target))
        self.links = LinkIndex(self.root)  # a linked file's names all get its new version

    def file(self, relative: str) -> str | None:
        """Bring one file to the plan's target, or say why it was left as it is."""
        if self.reencrypter is not None and _links(self.root / relative) > 1:
            self.reencrypter.wait()  # it may be another name of the file still being replaced
        try:
            fd = os.open(self.root / relative, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as exc:
            return f"left as it is: cannot be opened: {exc.strerror}"
        try:
            header = read_header_at(fd)
            file_key = unwrap_file_key(header, self.identities)
            if self._done(header, file_key):
                return None  # done before an interruption
            proof = self.keys.old.proof(header, file_key, Kind.FILE)
            if proof is not Proof.VALID:  # never vouch for a file the store did not write
                return f"left as it is: {proof.value}"
            names = self.links.names(relative, os.fstat(fd))
            if self.reencrypter is not None:
                reader = PayloadReader(fd, header.length, file_key)
                self.reencrypter.reencrypt(
                    self.root, relative, fd, reader, self.target, self.keys.new, names
                )
            else:
                stanzas = wrap_file_key(file_key, self.target)
                rewrap_file(
                    self.root, relative, fd, header, file_key, stanzas, self.keys.new, names
                )
        except AgeError as exc:
            return f"left as it is: cannot be decrypted and authenticated: {exc}"
        finally:
            os.close(fd)
        return None

    def _done(self, header: Header, file_key: bytes) -> bool:
        """With rotation, a proof under the new key says the file was done; without, the old
        key is the new one, and only the header's stanzas tell an added recipient's file."""
        if not self.plan.rotate_auth and _shape(recipient_stanzas(header)) != self.done_shape:
            return False
        return self.keys.new.proof(header, file_key, Kind.FILE) is Proof.VALID


def _finish(
    root: Path,
    plan: Plan,
    keys: Keys,
    target: Sequence[Recipient],
    config_save: Callable[[list[str]], None],
) -> None:
    """Step 4: canary (proof under the new key first), auth.age, config, then the plan goes."""
    write_canary(root, target, keys.new)
    save_auth_key(root, keys.new, target)
    config_save(list(plan.recipients))
    # The plan first: while it exists, a resumed run needs auth-next.age.
    for relative in (PLAN_FILE, NEXT_AUTH_FILE):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(root / relative)
    fsync_dir(root / META_DIR)
