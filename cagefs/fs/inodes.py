"""The inode table: stable FUSE inode numbers for plaintext paths, and what each one is.

Publishing by rename gives a backing file a new `st_ino`, so FUSE inodes cannot be backing
inodes. Instead each path gets a number the first time the kernel looks it up, and keeps it for
the life of the mount: across the kernel's forget, publishes and renames (renames move the
number with the path); unlink and rmdir drop it. The path → number map costs about 200 bytes
per path ever looked up and still there, up to `REMEMBERED_PATHS`; past that, the paths the
kernel has longest forgotten lose their number (they get a new one if looked up again).
"""

import contextlib
import enum
import errno
import logging
import os
import stat
from collections import Counter, OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pyfuse3
import trio

from cagefs.fs.content import FileContent
from cagefs.store import links
from cagefs.store.layout import NAME_MAX, SUFFIX, backing_file_name, is_meta
from cagefs.store.paths import StoreDirs

log = logging.getLogger("cagefs")
REMEMBERED_PATHS = 500_000


class Kind(enum.Enum):
    FILE = "file"
    DIR = "dir"
    SYMLINK = "symlink"
    SPECIAL = "special"  # FIFO, socket, device: mirrored as the same node, no data (I1 holds)


@dataclass(eq=False)
class Node:
    ino: int
    path: str | None  # relative plaintext path; "" is the root, None once unlinked
    kind: Kind
    lookups: int = 0
    content: FileContent | None = None
    last: os.stat_result | None = None  # the backing entry's stat as its last name went
    # Hard links: the node's other known names, the number of names it has (in the store,
    # or, not yet published, here), and whether every name in the store has been found.
    links: set[str] = field(default_factory=set)
    nlink: int = 1
    names_found: bool = False
    backing: tuple[int, int] | None = None  # (st_dev, st_ino) of a linked backing entry

    @property
    def names(self) -> list[str]:
        """Every known name; the first is the one the node is reached by (`path`)."""
        return [] if self.path is None else [self.path, *sorted(self.links)]

    def rename(self, old: str, new: str) -> None:
        if self.path == old:
            self.path = new
        else:
            self.links.discard(old)
            self.links.add(new)


Probed = tuple[str, Kind, os.stat_result | None]


def join(parent: str, name: str) -> str:
    return f"{parent}/{name}" if parent else name


def check_name(name: str) -> None:
    if len(os.fsencode(name)) > NAME_MAX:
        raise pyfuse3.FUSEError(errno.ENAMETOOLONG)


def kind_of_mode(mode: int) -> Kind:
    if stat.S_ISREG(mode):
        return Kind.FILE
    if stat.S_ISDIR(mode):
        return Kind.DIR
    if stat.S_ISLNK(mode):
        return Kind.SYMLINK
    return Kind.SPECIAL


def backing_name(name: str, kind: Kind) -> str:
    """A plaintext name's entry in its backing directory: files get the suffix, nothing else."""
    return backing_file_name(name) if kind is Kind.FILE else name


class PublishedCtimes:
    """The ctime a published file, and its directory, showed before the publish, which the
    rename moved on disk (ctime cannot be set). Kept while the backing entry's ctime is the
    one the publish left: any later change (chmod, rename) shows its own time. Lost at
    unmount: after a remount they show the time of the publish."""

    LIMIT = 100_000  # about 200 bytes each

    def __init__(self) -> None:
        self._shown: OrderedDict[tuple[int, int], tuple[int, int]] = OrderedDict()

    def remember(self, st: os.stat_result, shown_ns: int) -> None:
        self._shown[st.st_dev, st.st_ino] = (st.st_ctime_ns, shown_ns)
        self._shown.move_to_end((st.st_dev, st.st_ino))
        if len(self._shown) > self.LIMIT:
            self._shown.popitem(last=False)

    def shown(self, st: os.stat_result) -> int:
        on_disk, shown = self._shown.get((st.st_dev, st.st_ino), (None, 0))
        return shown if on_disk == st.st_ctime_ns else st.st_ctime_ns


class InodeTable:
    def __init__(self, root: Path) -> None:
        self.dirs = StoreDirs(root)
        self.nodes: dict[int, Node] = {pyfuse3.ROOT_INODE: Node(pyfuse3.ROOT_INODE, "", Kind.DIR)}
        self.by_path: dict[str, Node] = {"": self.nodes[pyfuse3.ROOT_INODE]}
        self.inos: OrderedDict[str, int] = OrderedDict()  # paths forgotten by the kernel
        self.unpublished: set[Node] = set()
        self.linked: dict[tuple[int, int], Node] = {}  # by backing entry, nlink > 1
        # Links in .cagefs/links/ to versions being published (store/links.py): not names.
        self.intent_links: Counter[tuple[int, int]] = Counter()
        self.ctimes = PublishedCtimes()
        self._next_ino = pyfuse3.ROOT_INODE + 1

    def get(self, ino: int) -> Node:
        try:
            return self.nodes[ino]
        except KeyError:
            raise pyfuse3.FUSEError(errno.ENOENT) from None

    @contextlib.contextmanager
    def at(self, path: str | None, kind: Kind) -> Iterator[tuple[int, str]]:
        """The store directory holding `path`'s backing entry, and the entry's name there."""
        if path is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        head, _, name = path.rpartition("/")
        with self.dirs.at(head) as dir_fd:
            yield dir_fd, backing_name(name, kind) if path else "."

    def dir_at(self, node: Node) -> contextlib.AbstractContextManager[int]:
        """The store directory a directory node stands for."""
        if node.kind is not Kind.DIR or node.path is None:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        return self.dirs.at(node.path)

    def probe(self, parent: Node, name: str, dir_fd: int | None = None) -> Probed | None:
        """What `name` in `parent` is: (path, kind, backing stat or None if not yet published).

        `dir_fd`, if given, is the parent's store directory, already open.
        """
        if dir_fd is None:
            with self.dir_at(parent) as fd:
                return self.probe(parent, name, fd)
        assert parent.path is not None
        if is_meta(parent.path, name):
            return None
        path = join(parent.path, name)
        node = self.by_path.get(path)
        if node is not None and node in self.unpublished:
            return path, Kind.FILE, None
        with contextlib.suppress(FileNotFoundError):
            st = os.lstat(backing_file_name(name), dir_fd=dir_fd)
            if stat.S_ISREG(st.st_mode):
                return path, Kind.FILE, st
        try:
            st = os.lstat(name, dir_fd=dir_fd)
        except FileNotFoundError:
            return None
        kind = kind_of_mode(st.st_mode)
        if kind is Kind.FILE:
            return None  # a foreign file (no suffix): not ours, never shown
        return path, kind, st

    def backing_taken(self, dir_fd: int, parent: str, name: str, kind: Kind) -> bool:
        """Whether the backing name of `name` as a `kind` is held by another entry: `x.age` is
        both file `x`'s backing name and that of a directory, symlink or special file named
        `x.age`. Such a name is refused (EEXIST), so that no publish or rename destroys the
        other entry."""
        wanted = backing_name(name, kind)
        try:
            st = os.lstat(wanted, dir_fd=dir_fd)
        except FileNotFoundError:
            pass
        else:
            if stat.S_ISREG(st.st_mode) is not (kind is Kind.FILE):
                return True
        if kind is not Kind.FILE and name.endswith(SUFFIX):
            owner = self.by_path.get(join(parent, name[: -len(SUFFIX)]))
            return owner is not None and owner in self.unpublished
        return False

    def node_for(self, path: str, kind: Kind, st: os.stat_result | None = None) -> Node:
        """The node of `path`, a `kind`; `st`, if given, is its backing entry's lstat: a name
        of an entry with several links is a name of the node that entry already has."""
        node = self.by_path.get(path)
        if node is not None and node.kind is kind:
            if st is not None and kind is not Kind.DIR:
                node.nlink = self.link_count(st)
            return node
        if node is not None:
            self.unname(node, path)
        if st is not None and self.link_count(st) > 1 and kind is not Kind.DIR:
            linked = self.linked.get((st.st_dev, st.st_ino))
            if linked is not None and linked.path is not None and linked.kind is kind:
                self.add_name(linked, path)
                linked.nlink = self.link_count(st)
                return linked
        ino = self.inos.pop(path, None)
        if ino is None or ino in self.nodes:
            ino = self._next_ino
            self._next_ino += 1
        node = Node(ino, path, kind)
        self.nodes[node.ino] = node
        self.by_path[path] = node
        if st is not None and kind is not Kind.DIR:
            node.nlink = self.link_count(st)
            if node.nlink > 1:
                self.set_backing(node, st)
        return node

    def link_count(self, st: os.stat_result) -> int:
        """The names a backing entry has (`st_nlink`, less an intent's own link)."""
        return st.st_nlink - self.intent_links.get((st.st_dev, st.st_ino), 0)

    def set_backing(self, node: Node, st: os.stat_result | None) -> None:
        """The node's backing entry is now `st` (None: not known to be linked)."""
        if node.backing is not None and self.linked.get(node.backing) is node:
            del self.linked[node.backing]
        node.backing = None if st is None else (st.st_dev, st.st_ino)
        if node.backing is not None:
            self.linked[node.backing] = node

    def add_name(self, node: Node, path: str) -> None:
        """One more name of `node` (a hard link made, or found in the store)."""
        self.inos.pop(path, None)
        self.by_path[path] = node
        node.links.add(path)

    def unname(self, node: Node, path: str, last: os.stat_result | None = None) -> None:
        """One name of `node` is gone (unlink, replaced by rename); the node goes on under its
        other names, or, with none left, as `detach` leaves it."""
        if path not in node.names:
            return
        if not node.links:
            self.detach(node, last)
            return
        if self.by_path.get(path) is node:
            del self.by_path[path]
        self.inos.pop(path, None)
        if path == node.path:
            node.path = min(node.links)
            node.links.discard(node.path)
        else:
            node.links.discard(path)
        node.nlink = max(node.nlink - 1, 1)

    def missing_names(self, node: Node) -> bool:
        """Whether `node` has names in the store that no request has named yet."""
        return (
            node.kind is Kind.FILE
            and not node.names_found
            and node.path is not None
            and node not in self.unpublished
            and node.nlink > len(node.names)
        )

    async def find_names(self, node: Node) -> None:
        """Find every name of a linked file in the store (a walk of the whole store, off the
        loop; once per node): a new version must reach them all, an unlink of the last known
        name must not end the file."""
        try:
            with self.at(node.path, node.kind) as (dir_fd, name):
                st = os.lstat(name, dir_fd=dir_fd)
        except (OSError, pyfuse3.FUSEError):
            return
        try:
            found = await trio.to_thread.run_sync(
                links.find_names, self.dirs, st.st_dev, st.st_ino
            )
        except OSError as exc:  # the names known are still served and published
            log.error("%s: could not look for its other names: %s", node.path, exc.strerror)
            return
        for path in found:
            if path in node.names or self.by_path.get(path) not in (None, node):
                continue
            try:  # renamed or unlinked while the walk ran?
                with self.at(path, Kind.FILE) as (dir_fd, name):
                    again = os.lstat(name, dir_fd=dir_fd)
            except (OSError, pyfuse3.FUSEError):
                continue
            if (again.st_dev, again.st_ino) == (st.st_dev, st.st_ino):
                self.add_name(node, path)
        node.names_found = True
        self.set_backing(node, st)

    def backing_entry(self, path: str, kind: Kind) -> tuple[str, str]:
        """The store directory (a path) and the backing name of plaintext `path`."""
        head, _, name = path.rpartition("/")
        return head, backing_name(name, kind)

    def attach(self, node: Node, content: FileContent) -> FileContent:
        node.content = content
        content.node = node
        return content

    def detach(self, node: Node, last: os.stat_result | None = None) -> None:
        """The name is gone (unlink, replaced by rename); open handles keep the node alive,
        and see `last` (the entry's stat before it went) with no link left."""
        for path in node.names:
            if self.by_path.get(path) is node:
                del self.by_path[path]
            self.inos.pop(path, None)  # a directory that goes is empty: nothing below
        node.path = None
        node.links.clear()
        node.last = last
        self.unpublished.discard(node)
        self.drop_if_unused(node)

    def move(self, node: Node, old_path: str, new_path: str) -> None:
        """Rename a node's name `old_path` and, for a directory, every known name and number
        below it."""
        prefix = old_path + "/"
        self.inos.pop(new_path, None)  # what the rename replaces is gone (an empty dir, if one)
        moved = [(old_path, node)]
        if node.kind is Kind.DIR:
            moved += [(p, n) for p, n in self.by_path.items() if p.startswith(prefix)]
        for p, _ in moved:
            del self.by_path[p]
        for p, n in moved:
            n.rename(p, new_path + p[len(old_path) :])
            self.by_path[new_path + p[len(old_path) :]] = n
        if node.kind is Kind.DIR:
            below = [(p, i) for p, i in self.inos.items() if p.startswith(prefix)]
            for p, _ in below:
                del self.inos[p]
            for p, i in below:
                self.inos[new_path + p[len(old_path) :]] = i

    def has_unpublished_below(self, path: str) -> bool:
        prefix = path + "/" if path else ""
        return any(p.startswith(prefix) for n in self.unpublished for p in n.names)

    def forget(self, ino: int, count: int) -> None:
        node = self.nodes.get(ino)
        if node is not None:
            node.lookups -= count
            self.drop_if_unused(node)

    def drop_if_unused(self, node: Node) -> None:
        """Forget a node the kernel no longer knows and that holds no content; its path keeps
        the number."""
        if node.content is not None and node.content.idle:
            node.content.close()
            node.content = None
        if node.lookups > 0 or node.content is not None or node.ino == pyfuse3.ROOT_INODE:
            return
        self.nodes.pop(node.ino, None)
        self.set_backing(node, None)
        for path in node.names:
            if self.by_path.get(path) is node:
                del self.by_path[path]
                self.inos[path] = node.ino
                if len(self.inos) > REMEMBERED_PATHS:
                    self.inos.popitem(last=False)
