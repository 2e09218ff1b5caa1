"""Copy a plain tree into a store (`import_tree`) or a store out to a plain tree
(`export_tree`), without a mount, as the mount would store and show it.

Kept: directories, regular files (as age files, written like every new version: in
`.cagefs/tmp/`, durable, then renamed: no plaintext ever reaches the store, I1, I3), symlinks
(their targets, as the mount stores them), modes, owners and times. Not kept, like the mount:
special files (FIFOs, sockets, devices: the mount refuses them) and hard links (each name
becomes a file of its own). Each problem concerns one entry, is reported, and the rest goes on.
"""

import contextlib
import os
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cagefs.age.errors import AgeError
from cagefs.age.file import open_file
from cagefs.age.recipients import Identity, Recipient
from cagefs.age.stream import PayloadReader
from cagefs.store.auth import AuthKey, FileAuth
from cagefs.store.layout import META_DIR, NAME_MAX, backing_file_name, plain_file_name
from cagefs.store.rewrap import BLOCK, keep_attributes, plaintext_blocks, publish, write_version
from cagefs.store.sealer import SealerPool
from cagefs.store.versions import write_all


@dataclass
class Outcome:
    """What happened to one entry: `problem` is None when it was copied."""

    path: str  # relative to the source
    size: int
    problem: str | None = None


@dataclass
class _Dirs:
    """Directories whose times are set once everything inside them is written."""

    times: list[tuple[Path, os.stat_result]] = field(default_factory=list)

    def make(self, path: Path, st: os.stat_result) -> None:
        """`path` as a directory (kept if there) with `st`'s owner and mode; times at the end."""
        path.mkdir(exist_ok=True)
        os.chown(path, st.st_uid, st.st_gid)
        os.chmod(path, stat.S_IMODE(st.st_mode))
        self.times.append((path, st))

    def restore(self) -> None:
        for path, st in reversed(self.times):
            os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)


def _copy_symlink(link: Path, out: Path, st: os.stat_result) -> None:
    """A new symlink `out` with the target, owner and times of `link` (`st`)."""
    os.symlink(os.readlink(link), out)
    os.chown(out, st.st_uid, st.st_gid, follow_symlinks=False)
    os.utime(out, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)


def import_tree(
    source: Path,
    root: Path,
    recipients: Sequence[Recipient],
    key: AuthKey,
    remove_source: bool = False,
) -> Iterator[Outcome]:
    """Import `source` (a directory's contents, or one file) into the store at `root`."""
    run = _Import(root, recipients, key, remove_source, SealerPool(limit=1))
    try:
        if source.is_dir() and not source.is_symlink():
            yield from run.directory(source, "")
        else:
            yield run.entry(source, source.name)
    finally:
        run.sealers.close()
        run.dirs.restore()


@dataclass
class _Import:
    """One `import_tree`: where to, with which keys, and what it leaves behind."""

    root: Path
    recipients: Sequence[Recipient]
    key: AuthKey
    remove_source: bool
    sealers: SealerPool
    dirs: _Dirs = field(default_factory=_Dirs)

    def directory(self, source: Path, relative: str) -> Iterator[Outcome]:
        for entry in sorted(os.scandir(source / relative), key=lambda e: e.name):
            path = f"{relative}{entry.name}"
            outcome = self.entry(source / path, path)
            yield outcome
            if outcome.problem is None and entry.is_dir(follow_symlinks=False):
                yield from self.directory(source, f"{path}/")
                if self.remove_source:
                    with contextlib.suppress(OSError):  # what was not imported stays, in its dir
                        os.rmdir(source / path)

    def entry(self, path: Path, relative: str) -> Outcome:
        try:
            st = os.lstat(path)
        except OSError as exc:
            return Outcome(relative, 0, f"not imported: {exc.strerror}")
        outcome = Outcome(relative, st.st_size if stat.S_ISREG(st.st_mode) else 0)
        name = os.path.basename(relative)
        target = self.root / (
            backing_file_name(relative) if stat.S_ISREG(st.st_mode) else relative
        )
        if len(os.fsencode(name)) > NAME_MAX:
            outcome.problem = f"not imported: the name is longer than {NAME_MAX} bytes"
        elif relative.split("/")[0] == META_DIR:
            outcome.problem = f"not imported: {META_DIR} is the store's own"
        elif os.path.lexists(target) and not (stat.S_ISDIR(st.st_mode) and target.is_dir()):
            outcome.problem = "not imported: already in the store"
        elif not (
            stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode) or stat.S_ISLNK(st.st_mode)
        ):
            outcome.problem = "not imported: special files cannot be stored (as on a mount)"
        if outcome.problem:
            return outcome
        try:
            if stat.S_ISDIR(st.st_mode):
                self.dirs.make(target, st)
            elif stat.S_ISLNK(st.st_mode):
                _copy_symlink(path, target, st)
                if self.remove_source:
                    os.unlink(path)
            else:
                self.file(path, relative, st)
        except (OSError, AgeError) as exc:
            reason = getattr(exc, "strerror", None) or str(exc)
            outcome.problem = f"not imported: {reason}"
        return outcome

    def file(self, path: Path, relative: str, st: os.stat_result) -> None:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            version = write_version(
                self.root, self.recipients, self.key, self.sealers, _file_blocks(fd), st.st_size
            )
            if self.remove_source:
                try:
                    _check_same(version.open_reader(), fd)
                except BaseException:
                    version.discard()
                    raise
            publish(version, self.root, backing_file_name(relative), st)
        finally:
            os.close(fd)
        if self.remove_source:
            os.unlink(path)


def _file_blocks(fd: int) -> Iterator[bytes]:
    offset = 0
    while block := os.pread(fd, BLOCK, offset):
        yield block
        offset += len(block)


def _check_same(reader: PayloadReader, fd: int) -> None:
    """The version, read back from disk, holds exactly the source's bytes."""
    offset = 0
    for block in plaintext_blocks(reader):
        if os.pread(fd, len(block), offset) != block:
            raise OSError(0, "the stored copy differs from the source: source kept")
        offset += len(block)
    if os.pread(fd, 1, offset):
        raise OSError(0, "the source grew while it was imported: source kept")


def export_tree(
    root: Path, dest: Path, identities: Sequence[Identity], auth: FileAuth
) -> Iterator[Outcome]:
    """Decrypt the store at `root` into the new or empty directory `dest`."""
    dirs = _Dirs()
    try:
        yield from _export_dir(root, dest, "", identities, auth, dirs)
    finally:
        dirs.restore()


def _export_dir(
    root: Path,
    dest: Path,
    relative: str,
    identities: Sequence[Identity],
    auth: FileAuth,
    dirs: _Dirs,
) -> Iterator[Outcome]:
    for entry in sorted(os.scandir(root / relative), key=lambda e: e.name):
        path = f"{relative}{entry.name}"
        if path == META_DIR:
            continue
        st = entry.stat(follow_symlinks=False)
        if entry.is_dir(follow_symlinks=False):
            dirs.make(dest / path, st)
            yield Outcome(path, 0)
            yield from _export_dir(root, dest, f"{path}/", identities, auth, dirs)
        elif entry.is_symlink():
            yield _export_symlink(root / path, dest / path, st, path)
        elif entry.is_file(follow_symlinks=False) and plain_file_name(entry.name):
            name = path[: -len(".age")]
            yield _export_file(root / path, dest / name, st, name, identities, auth)
        else:
            yield Outcome(path, 0, "not exported: not a file the store made (foreign)")


def _export_symlink(path: Path, out: Path, st: os.stat_result, relative: str) -> Outcome:
    try:
        _copy_symlink(path, out, st)
    except OSError as exc:
        return Outcome(relative, 0, f"not exported: {exc.strerror}")
    return Outcome(relative, 0)


def _export_file(
    path: Path,
    out: Path,
    st: os.stat_result,
    relative: str,
    identities: Sequence[Identity],
    auth: FileAuth,
) -> Outcome:
    """Decrypt into `out` (a new file); a file that fails authentication leaves nothing."""
    outcome = Outcome(relative, st.st_size)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        outcome.problem = f"not exported: {exc.strerror}"
        return outcome
    try:
        reader = open_file(fd, identities, auth.check).reader
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        out_fd = os.open(out, flags, 0o600)
        try:
            for block in plaintext_blocks(reader):
                write_all(out_fd, block)
            keep_attributes(out_fd, st)
        except BaseException:
            os.unlink(out)
            raise
        finally:
            os.close(out_fd)
    except AgeError as exc:
        outcome.problem = f"not exported: cannot be decrypted and authenticated: {exc}"
    except OSError as exc:
        outcome.problem = f"not exported: {exc.strerror or exc}"
    finally:
        os.close(fd)
    return outcome
