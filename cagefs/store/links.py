"""Hard links: one backing age file under every name, and new versions that reach all names.

Every name of a hard-linked file is a hard link to the same backing file, so each name is a
stock-readable `NAME.age` (`age -d` opens any of them). Renaming a new version over one name
would split that name from the others, so a version of a linked file is linked beside each
name under a temp name and renamed over it: one rename per name. A crash between two of them
would leave some names old and some new, so an intent is made durable first:

    .cagefs/links/ID.age    a hard link to the (durable) version
    .cagefs/links/ID.json   {"names": [["a/b", "x.age", ".cagefs-link-…"], …]}

(per name: its directory, backing name and temp name). The intent is removed once every name's
directory is durable; the next mount finishes any intent it finds (`replay`), so a crash leaves
all names old (no intent yet) or all new. An intent names only backing entries, which the store
shows anyway (names are not encrypted), and its version is ciphertext: nothing new at rest (I1).
"""

import contextlib
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cagefs.store.atomic import replace_atomically
from cagefs.store.layout import LINKS_DIR, SUFFIX, is_meta
from cagefs.store.paths import StoreDirs, fsync_dirs, link_over, open_listing

log = logging.getLogger("cagefs")
LINK_TEMP_PREFIX = ".cagefs-link-"  # a regular file without the suffix: no mount shows it
_RECORD = ".json"


@dataclass
class Intent:
    """A version on its way to every name of a file: `names` are (directory, backing name,
    temp name) in the store, `version` the intent's own link to the version."""

    record: Path
    version: str
    names: list[tuple[str, str, str]]


def begin(root: Path, version: str, names: Sequence[tuple[str, str]]) -> Intent:
    """Make durable the intent to put the version at `version` (durable already) under every
    (directory, backing name) in `names`."""
    directory = root / LINKS_DIR
    directory.mkdir(mode=0o700, exist_ok=True)
    intent_id = os.urandom(12).hex()
    intent = Intent(
        directory / f"{intent_id}{_RECORD}",
        str(directory / f"{intent_id}{SUFFIX}"),
        [(d, n, LINK_TEMP_PREFIX + os.urandom(8).hex()) for d, n in names],
    )
    os.link(version, intent.version)
    try:  # the record's directory is synced last: its link to the version is durable too
        with replace_atomically(root, f"{LINKS_DIR}/{intent.record.name}") as record:
            record.write(json.dumps({"names": intent.names}).encode())
    except BaseException:
        abandon(intent)
        raise
    return intent


def finish(intent: Intent) -> None:
    """Every name holds the version durably: the intent is done (the record goes first, so
    that a record is never left without its version)."""
    with contextlib.suppress(FileNotFoundError):
        intent.record.unlink()
    with contextlib.suppress(FileNotFoundError):
        os.unlink(intent.version)


def abandon(intent: Intent) -> None:
    """A publish that failed part-way (it is retried): no later mount may finish this one,
    since the file's names may have changed by then."""
    finish(intent)


def replay(root: Path) -> int:
    """Finish every intent a crash left (before stray temps are removed); returns how many.
    A name that cannot be done is logged and left."""
    directory = root / LINKS_DIR
    if not directory.is_dir():
        return 0
    finished = 0
    dirs = StoreDirs(root)
    try:
        for entry in sorted(os.listdir(directory)):
            if not entry.endswith(_RECORD):
                continue
            intent = _load(directory / entry)
            if intent is None:
                continue
            if os.path.exists(intent.version):  # else every name was durable already
                _apply(dirs, intent)
            finish(intent)
            finished += 1
        for entry in os.listdir(directory):  # versions whose record never became durable
            record = directory / f"{entry.removesuffix(SUFFIX)}{_RECORD}"
            if entry.endswith(SUFFIX) and not record.exists():
                os.unlink(directory / entry)
    finally:
        dirs.close()
    return finished


def _load(record: Path) -> Intent | None:
    try:
        names = json.loads(record.read_bytes())["names"]
        return Intent(record, str(record.with_suffix(SUFFIX)), [(d, n, t) for d, n, t in names])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.error("%s: unreadable link intent, left as it is (%s)", record.name, exc)
        return None


def _apply(dirs: StoreDirs, intent: Intent) -> None:
    synced = []
    try:
        for directory, name, temp in intent.names:
            try:
                with dirs.at(directory) as dir_fd:
                    link_over(intent.version, dir_fd, name, temp)
                    synced.append(open_listing(dir_fd))
            except OSError as exc:
                shown = f"{directory}/{name}" if directory else name
                log.error("%s: could not finish publishing a hard link: %s", shown, exc.strerror)
    finally:
        fsync_dirs(synced)


def find_names(dirs: StoreDirs, dev: int, ino: int) -> list[str]:
    """The plaintext paths of every backing file that is the file (`dev`, `ino`): a walk of
    the whole store, comparing inode numbers from the directory listings (a stat only where
    they match). For the names of a linked file that no request has named yet."""
    found = []
    below = [""]
    while below:
        path = below.pop()
        try:
            with dirs.at(path) as dir_fd:
                fd = open_listing(dir_fd)
        except OSError:
            continue  # gone meanwhile
        try:
            with os.scandir(fd) as scan:
                for entry in scan:
                    child = f"{path}/{entry.name}" if path else entry.name
                    if entry.is_dir(follow_symlinks=False):
                        if not is_meta(path, entry.name):
                            below.append(child)
                    elif (
                        entry.inode() == ino
                        and entry.name.endswith(SUFFIX)
                        and entry.stat(follow_symlinks=False).st_dev == dev
                    ):
                        found.append(child[: -len(SUFFIX)])
        finally:
            os.close(fd)
    return found
