"""The inode table: stable FUSE inode numbers for plaintext paths, and what each one is.

Publishing by rename gives a backing file a new `st_ino`, so FUSE inodes cannot be backing
inodes. Instead each path the kernel knows gets a number for as long as the kernel holds a
lookup on it, and renames move the path, not the number.
"""

import enum
import errno
import os
from dataclasses import dataclass
from pathlib import Path

import pyfuse3

from cagefs.fs.content import FileContent
from cagefs.store.layout import NAME_MAX, backing_file_name, is_meta


class Kind(enum.Enum):
    FILE = "file"
    DIR = "dir"
    SYMLINK = "symlink"


@dataclass(eq=False)
class Node:
    ino: int
    path: str | None  # relative plaintext path; "" is the root, None once unlinked
    kind: Kind
    lookups: int = 0
    content: FileContent | None = None


def join(parent: str, name: str) -> str:
    return f"{parent}/{name}" if parent else name


def check_name(name: str) -> None:
    if len(os.fsencode(name)) > NAME_MAX:
        raise pyfuse3.FUSEError(errno.ENAMETOOLONG)


def kind_of_mode(mode: int) -> Kind | None:
    if (mode & 0o170000) == 0o100000:
        return Kind.FILE
    if (mode & 0o170000) == 0o040000:
        return Kind.DIR
    if (mode & 0o170000) == 0o120000:
        return Kind.SYMLINK
    return None


class InodeTable:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.nodes: dict[int, Node] = {pyfuse3.ROOT_INODE: Node(pyfuse3.ROOT_INODE, "", Kind.DIR)}
        self.by_path: dict[str, Node] = {"": self.nodes[pyfuse3.ROOT_INODE]}
        self.unpublished: set[Node] = set()
        self._next_ino = pyfuse3.ROOT_INODE + 1

    def get(self, ino: int) -> Node:
        try:
            return self.nodes[ino]
        except KeyError:
            raise pyfuse3.FUSEError(errno.ENOENT) from None

    def backing(self, path: str, kind: Kind) -> str:
        if kind is Kind.FILE:
            head, _, name = path.rpartition("/")
            path = join(head, backing_file_name(name))
        return str(self.root / path) if path else str(self.root)

    def backing_of(self, node: Node) -> str | None:
        return None if node.path is None else self.backing(node.path, node.kind)

    def probe(self, parent: Node, name: str) -> tuple[str, Kind, os.stat_result | None] | None:
        """What `name` in `parent` is: (path, kind, backing stat or None if not yet published)."""
        if parent.kind is not Kind.DIR or parent.path is None:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        if is_meta(parent.path, name):
            return None
        path = join(parent.path, name)
        node = self.by_path.get(path)
        if node is not None and node in self.unpublished:
            return path, Kind.FILE, None
        try:
            st = os.lstat(self.backing(path, Kind.FILE))
            if kind_of_mode(st.st_mode) is Kind.FILE:
                return path, Kind.FILE, st
        except FileNotFoundError:
            pass
        try:
            st = os.lstat(self.backing(path, Kind.DIR))
        except FileNotFoundError:
            return None
        kind = kind_of_mode(st.st_mode)
        if kind in (Kind.DIR, Kind.SYMLINK):
            return path, kind, st
        return None  # a foreign file (no suffix) or a device: not ours, never shown

    def node_for(self, path: str, kind: Kind) -> Node:
        node = self.by_path.get(path)
        if node is not None and node.kind is kind:
            return node
        if node is not None:
            self.detach(node)
        node = Node(self._next_ino, path, kind)
        self._next_ino += 1
        self.nodes[node.ino] = node
        self.by_path[path] = node
        return node

    def attach(self, node: Node, content: FileContent) -> FileContent:
        node.content = content
        content.node = node
        return content

    def detach(self, node: Node) -> None:
        """The name is gone (unlink, replaced by rename); open handles keep the node alive."""
        if node.path is not None and self.by_path.get(node.path) is node:
            del self.by_path[node.path]
        node.path = None
        self.unpublished.discard(node)
        self.drop_if_unused(node)

    def move(self, node: Node, new_path: str) -> None:
        """Rename a node and, for a directory, every known node below it."""
        old_path = node.path
        assert old_path is not None
        prefix = old_path + "/"
        moved = [node] + [n for p, n in self.by_path.items() if p.startswith(prefix)]
        for n in moved:
            assert n.path is not None
            del self.by_path[n.path]
        for n in moved:
            assert n.path is not None
            n.path = new_path + n.path[len(old_path) :]
            self.by_path[n.path] = n

    def has_unpublished_below(self, path: str) -> bool:
        prefix = path + "/" if path else ""
        return any(n.path is not None and n.path.startswith(prefix) for n in self.unpublished)

    def forget(self, ino: int, count: int) -> None:
        node = self.nodes.get(ino)
        if node is not None:
            node.lookups -= count
            self.drop_if_unused(node)

    def drop_if_unused(self, node: Node) -> None:
        """Forget a node the kernel no longer knows and that holds no content."""
        if node.content is not None and node.content.idle:
            node.content.close()
            node.content = None
        if node.lookups > 0 or node.content is not None or node.ino == pyfuse3.ROOT_INODE:
            return
        self.nodes.pop(node.ino, None)
        if node.path is not None and self.by_path.get(node.path) is node:
            del self.by_path[node.path]
