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
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from cagefs.store.layout import LINKS_DIR, SUFFIX, is_meta, remove_stray_temps
from cagefs.store.paths import StoreDirs, fsync_dir, fsync_dirs, link_over, open_listing
from cagefs.store.versions import write_all

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
    partial = intent.record.with_suffix(".partial")  # never read: a record appears whole
    try:
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            write_all(fd, json.dumps({"names": intent.names}).encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(partial, intent.record)
        fsync_dir(directory)  # the record, and the intent's link to the version
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            partial.unlink()
        abandon(intent)
        raise
    return intent


def put_in_place(root: Path, temp: str, relative: str, names: Sequence[str] = ()) -> None:
    """For the offline verbs: rename the durable file `temp` over `root/relative`; or, when
    `names` (every backing path of that file, `LinkIndex`) are several, link it under each
    name, all or nothing. Returns once it is durable."""
    if len(names) <= 1:
        os.rename(temp, root / relative)
        fsync_dir((root / relative).parent)
        return
    intent = begin(root, temp, [_split(name) for name in names])
    dirs = StoreDirs(root)
    try:
        _apply(dirs, intent, tolerate=False)
    except BaseException:
        abandon(intent)
        raise
    finally:
        dirs.close()
    finish(intent)
    os.unlink(temp)


class LinkIndex:
    """Every backing path of each file with several links, from one walk of the store made at
    the first question: for an offline verb, which holds the store's lock."""

    def __init__(self, root: Path) -> None:
        self._root = root
        self._names: dict[tuple[int, int], list[str]] | None = None

    def names(self, relative: str, st: os.stat_result) -> list[str]:
        """The backing paths of `relative`, whose stat is `st` (itself alone if not linked)."""
        if st.st_nlink < 2:
            return [relative]
        if self._names is None:
            self._names = {}
            dirs = StoreDirs(self._root)
            try:
                for path, entry in _backing_files(dirs):
                    found = entry.stat(follow_symlinks=False)
                    if found.st_nlink > 1:
                        key = (found.st_dev, found.st_ino)
                        self._names.setdefault(key, []).append(f"{path}{SUFFIX}")
            finally:
                dirs.close()
        return self._names.get((st.st_dev, st.st_ino), [relative])


def _split(relative: str) -> tuple[str, str]:
    directory, _, name = relative.rpartition("/")
    return directory, name


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


def recover(root: Path) -> tuple[int, int]:
    """What a crash left, for whoever holds the store's lock (a mount, the offline verbs):
    publishes of linked files finished, then stray temps removed. Returns both counts."""
    finished = replay(root)
    return finished, remove_stray_temps(root)


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
                _apply(dirs, intent, tolerate=True)
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


def _apply(dirs: StoreDirs, intent: Intent, tolerate: bool) -> None:
    """Link the intent's version under every name; `tolerate`: a name that fails is logged
    and left (the others are still done), else the error is raised."""
    synced = []
    try:
        for directory, name, temp in intent.names:
            try:
                with dirs.at(directory) as dir_fd:
                    link_over(intent.version, dir_fd, name, temp)
                    synced.append(open_listing(dir_fd))
            except OSError as exc:
                if not tolerate:
                    raise
                shown = f"{directory}/{name}" if directory else name
                log.error("%s: could not finish publishing a hard link: %s", shown, exc.strerror)
    finally:
        fsync_dirs(synced)


def find_names(dirs: StoreDirs, dev: int, ino: int) -> list[str]:
    """The plaintext paths of every backing file that is the file (`dev`, `ino`): a walk of
    the whole store, comparing inode numbers from the directory listings (a stat only where
    they match). For the names of a linked file that no request has named yet."""
    return [
        path
        for path, entry in _backing_files(dirs)
        if entry.inode() == ino and entry.stat(follow_symlinks=False).st_dev == dev
    ]


def _backing_files(dirs: StoreDirs) -> Iterator[tuple[str, os.DirEntry[str]]]:
    """Every backing file in the store, as (plaintext path, directory entry)."""
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
                    elif entry.name.endswith(SUFFIX) and entry.is_file(follow_symlinks=False):
                        yield child[: -len(SUFFIX)], entry
        finally:
            os.close(fd)
