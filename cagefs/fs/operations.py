"""The FUSE front end: translate each request to the inode table, file contents and store.

Handlers stay thin. Names are resolved by `InodeTable`, file data is `FileContent`'s business,
and durability is the `Publisher`'s; what is left here is POSIX semantics and errno choices.
"""

import collections
import contextlib
import errno
import functools
import logging
import os
import stat
import time
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

import pyfuse3
import trio

from cagefs.age import AgeError, Buffer
from cagefs.fs import directio
from cagefs.fs.attrs import ATTR_TIMEOUT, HeaderLengths, entry_attributes
from cagefs.fs.content import FileContent
from cagefs.fs.env import Env
from cagefs.fs.errors import about, fuse_errors, shown
from cagefs.fs.inodes import InodeTable, Kind, Node, Probed, backing_name, check_name, join
from cagefs.fs.pagestore import PageStore
from cagefs.fs.publisher import Publisher
from cagefs.store import reclaim
from cagefs.store.layout import NAME_MAX, is_meta, plain_file_name
from cagefs.store.paths import chmod_at, open_file, open_listing, touch_dir

log = logging.getLogger("cagefs")
_WRITE_MODES = os.O_WRONLY | os.O_RDWR


@dataclass
class Listing:
    """An open directory: the names its last read from the start saw, in offset order."""

    node: Node
    names: list[str] | None = None


@dataclass
class Handle:
    node: Node
    content: FileContent
    direct: bool = False  # writes bypass the kernel's page cache (directio.py)
    # Opened by an unprivileged user: its writes drop setuid/setgid. The kernel asks for that
    # itself (a setattr) before cached writes, but leaves it to us for direct_io ones.
    unprivileged: bool = False
    wrote: bool = False  # written through since its last flush: that close(2) must hear of errors
    writable: bool = False  # opened for writing: the kernel may hold pages it is writing


class Operations(pyfuse3.Operations):
    supports_dot_lookup = False
    # With pyfuse3 patched by scripts/install.sh, `write` is lent pyfuse3's receive buffer
    # instead of a copy of it: one copy less of every byte written. Stock pyfuse3 ignores it.
    borrow_write_buffers = True
    # With pyfuse3 patched by scripts/install.sh, the kernel keeps a file's cached pages when
    # a getattr answers another mtime (libfuse's default drops them: after every cached write,
    # since the kernel keeps no mtime of its own). Everything that changes a file's content
    # behind the kernel drops them itself (docs/ARCHITECTURE.md, "Coherence").
    fuse_capabilities: ClassVar[Mapping[str, bool]] = {"auto_inval_data": False}

    def __init__(self, env: Env, publisher: Publisher, table: InodeTable) -> None:
        super().__init__()
        self.env = env
        self.table = table
        self.publisher = publisher
        self.headers = HeaderLengths()
        self._handles: dict[int, Handle] = {}
        self._dirs: dict[int, Listing] = {}
        self._next_fh = 1
        self.pages = PageStore()
        # Per inode: writable handles, and truncates under way. No page is stored meanwhile.
        self._writers: collections.Counter[int] = collections.Counter()

    # --- names and attributes -------------------------------------------------------------

    def _attributes(
        self,
        node: Node,
        st: os.stat_result | None = None,
        dir_fd: int | None = None,
        name: str | None = None,
    ) -> pyfuse3.EntryAttributes:
        """The node's attributes. `st`, when given, is a fresh lstat of its backing entry;
        `dir_fd`, when given, the store directory that holds the entry, `name` its name there
        (default: the node's path's; a linked file's name may be in another directory)."""
        if node.content is not None:
            return entry_attributes(node, node.content.attrs, node.content.size)
        if node.path is None:
            if node.last is None:
                raise pyfuse3.FUSEError(errno.ENOENT)
            return entry_attributes(node, node.last, 0 if node.kind is Kind.FILE else None)
        if dir_fd is None:
            with self.table.at(node.path, node.kind) as (fd, _):
                return self._attributes(node, st, fd)
        name = name if name is not None else node.path.rpartition("/")[2]
        entry = backing_name(name, node.kind) if node.path else "."
        if st is None:
            st = os.lstat(entry, dir_fd=dir_fd)
        if node.kind is not Kind.DIR:
            node.nlink = self.table.link_count(st)
        size = self.headers.plaintext_size(dir_fd, entry, st) if node.kind is Kind.FILE else None
        attrs = entry_attributes(node, st, size)
        attrs.st_ctime_ns = self.table.ctimes.shown(st)
        return attrs

    def _lookup(self, parent: Node, name: str, dir_fd: int) -> tuple[Node, os.stat_result | None]:
        """The node `name` names in `parent` (whose store directory is `dir_fd`), and the
        backing lstat the lookup already did."""
        found = self.table.probe(parent, name, dir_fd)
        if found is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        path, kind, st = found
        return self.table.node_for(path, kind, st), st

    def _remember(self, node: Node, dir_fd: int | None = None) -> pyfuse3.EntryAttributes:
        attrs = self._attributes(node, dir_fd=dir_fd)
        node.lookups += 1
        return attrs

    @fuse_errors
    async def lookup(
        self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        text = os.fsdecode(name)
        check_name(text)
        parent = self.table.get(parent_inode)
        with self.table.dir_at(parent) as dir_fd:
            found = self.table.probe(parent, text, dir_fd)
            if found is None:
                return _absent()
            path, kind, st = found
            node = self.table.node_for(path, kind, st)
            attrs = self._attributes(node, st, dir_fd, text)
        node.lookups += 1
        return attrs

    @fuse_errors
    async def forget(self, inode_list: Sequence[tuple[int, int]]) -> None:
        for ino, count in inode_list:
            self.table.forget(ino, count)

    @fuse_errors
    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        return self._attributes(self.table.get(inode))

    @fuse_errors
    async def setattr(
        self,
        inode: int,
        attr: pyfuse3.EntryAttributes,
        fields: pyfuse3.SetattrFields,
        fh: int | None,
        ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:
        node = self.table.get(inode)
        if fields.update_size:
            await self._truncate(node, attr.st_size)
        atime = attr.st_atime_ns if fields.update_atime else None
        mtime = attr.st_mtime_ns if fields.update_mtime else None
        mode = attr.st_mode if fields.update_mode else None
        uid = attr.st_uid if fields.update_uid else None
        gid = attr.st_gid if fields.update_gid else None
        if node.content is not None:
            content = node.content
            if mode is not None:
                content.set_mode(mode)
            if uid is not None or gid is not None:
                content.set_owner(uid, gid)
            if atime is not None or mtime is not None:
                content.set_times(atime, mtime)
        else:
            self._set_backing_attributes(node, mode, uid, gid, atime, mtime)
        return self._attributes(node)

    def _set_backing_attributes(
        self,
        node: Node,
        mode: int | None,
        uid: int | None,
        gid: int | None,
        atime: int | None,
        mtime: int | None,
    ) -> None:
        with self.table.at(node.path, node.kind) as (dir_fd, entry):
            if mode is not None:
                chmod_at(dir_fd, entry, stat.S_IMODE(mode))
            if uid is not None or gid is not None:
                os.chown(
                    entry,
                    -1 if uid is None else uid,
                    -1 if gid is None else gid,
                    dir_fd=dir_fd,
                    follow_symlinks=False,
                )
            if atime is not None or mtime is not None:
                st = os.lstat(entry, dir_fd=dir_fd)
                os.utime(
                    entry,
                    ns=(
                        atime if atime is not None else st.st_atime_ns,
                        mtime if mtime is not None else st.st_mtime_ns,
                    ),
                    dir_fd=dir_fd,
                    follow_symlinks=False,
                )

    async def _truncate(self, node: Node, size: int) -> None:
        if node.kind is not Kind.FILE:
            raise pyfuse3.FUSEError(errno.EISDIR if node.kind is Kind.DIR else errno.EINVAL)
        async with self._changing(node.ino), self._locked_content(node) as content:
            content.truncate(size)
            if content.handles == 0:
                await content.finalize()
        self.table.drop_if_unused(node)

    @contextlib.asynccontextmanager
    async def _changing(self, ino: int) -> AsyncIterator[None]:
        """No page of `ino` is stored in the block, nor by a store queued before it."""
        self._writers[ino] += 1
        try:
            await self.pages.settle(ino)
            yield
        finally:
            self._count_out(ino)

    def _count_out(self, ino: int) -> None:
        self._writers[ino] -= 1
        if self._writers[ino] <= 0:
            del self._writers[ino]

    @contextlib.asynccontextmanager
    async def _locked_content(self, node: Node) -> AsyncIterator[FileContent]:
        """The node's content, locked, for a request that holds no handle on it.

        It is pinned while the request waits for the lock: a publish finishing meanwhile would
        otherwise find it idle and drop it from the node, and the change made after the wait
        would go to a content nobody sees (a truncate lost, a size that reads back as 0).
        """
        content = self._content(node)
        content.pins += 1
        try:
            async with content.lock:
                yield content
        finally:
            content.pins -= 1

    def _content(self, node: Node) -> FileContent:
        """The node's open content, opening the backing file if nobody has it open yet."""
        if node.content is None:
            if self.env.encrypt_only:  # no identity: nothing stored can be read or edited
                raise pyfuse3.FUSEError(errno.EACCES)
            with self.table.at(node.path, Kind.FILE) as (dir_fd, entry):
                fd = open_file(dir_fd, entry)
            with about(node.path):
                content = FileContent.open_existing(self.env, fd)
            content.attrs.st_ctime_ns = self.table.ctimes.shown(os.fstat(content.current.fd))
            self.table.attach(node, content)
        return node.content

    @fuse_errors
    async def readlink(self, inode: int, ctx: pyfuse3.RequestContext) -> bytes:
        node = self.table.get(inode)
        with self.table.at(node.path, node.kind) as (dir_fd, entry):
            return os.fsencode(os.readlink(entry, dir_fd=dir_fd))

    @fuse_errors
    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        st = os.statvfs(self.env.root)
        data = pyfuse3.StatvfsData()
        for name in (
            "f_bsize",
            "f_frsize",
            "f_blocks",
            "f_bfree",
            "f_bavail",
            "f_files",
            "f_ffree",
            "f_favail",
        ):
            setattr(data, name, getattr(st, name))
        data.f_namemax = NAME_MAX
        return data

    # --- directories ----------------------------------------------------------------------

    @contextlib.contextmanager
    def _new_entry(
        self, parent_inode: int, name: bytes, kind: Kind
    ) -> Iterator[tuple[int, str, str]]:
        """Check a name about to be created as a `kind`: valid, not taken (nor its backing
        name), not our metadata directory. Yields the parent's store directory, the new path
        and its backing name there."""
        parent = self.table.get(parent_inode)
        text = os.fsdecode(name)
        check_name(text)
        with self.table.dir_at(parent) as dir_fd:
            assert parent.path is not None  # dir_at() refused an unlinked parent
            if is_meta(parent.path, text):
                raise pyfuse3.FUSEError(errno.EACCES)
            if self.table.probe(parent, text, dir_fd) is not None or self.table.backing_taken(
                dir_fd, parent.path, text, kind
            ):
                raise pyfuse3.FUSEError(errno.EEXIST)
            yield dir_fd, join(parent.path, text), backing_name(text, kind)

    @staticmethod
    def _owner(dir_fd: int, ctx: pyfuse3.RequestContext) -> tuple[int, int]:
        """Who owns a new entry: the caller, in the directory's group if it is setgid."""
        parent = os.fstat(dir_fd)
        return ctx.uid, parent.st_gid if parent.st_mode & stat.S_ISGID else ctx.gid

    def _make_own(
        self, dir_fd: int, entry: str, mode: int, ctx: pyfuse3.RequestContext, keep: int = 0
    ) -> None:
        """Give a new backing entry the caller's owner and mode: the mode as asked (less the
        caller's umask), never the daemon's umask; `keep` are mode bits the kernel set."""
        os.chown(entry, *self._owner(dir_fd, ctx), dir_fd=dir_fd, follow_symlinks=False)
        mode = stat.S_IMODE(mode) & ~ctx.umask
        if keep:
            mode |= os.lstat(entry, dir_fd=dir_fd).st_mode & keep
        chmod_at(dir_fd, entry, mode)

    @fuse_errors
    async def mkdir(
        self, parent_inode: int, name: bytes, mode: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        with self._new_entry(parent_inode, name, Kind.DIR) as (dir_fd, path, entry):
            os.mkdir(entry, 0o700, dir_fd=dir_fd)
            self._make_own(dir_fd, entry, mode, ctx, keep=stat.S_ISGID)
            return self._remember(self.table.node_for(path, Kind.DIR), dir_fd)

    @fuse_errors
    async def rmdir(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        parent = self.table.get(parent_inode)
        text = os.fsdecode(name)
        with self.table.dir_at(parent) as dir_fd:
            node, st = self._lookup(parent, text, dir_fd)
            if node.kind is not Kind.DIR:
                raise pyfuse3.FUSEError(errno.ENOTDIR)
            assert node.path is not None
            if self.table.has_unpublished_below(node.path):
                raise pyfuse3.FUSEError(errno.ENOTEMPTY)
            os.rmdir(text, dir_fd=dir_fd)
            self.table.detach(node, st)

    @fuse_errors
    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        node = self.table.get(inode)
        if node.kind is not Kind.DIR or node.path is None:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        fh = self._new_fh()
        self._dirs[fh] = Listing(node)
        return fh

    def _list(self, node: Node, dir_fd: int) -> list[str]:
        """A sorted snapshot of the names shown, so readdir offsets stay stable."""
        assert node.path is not None
        names = set()
        listing = open_listing(dir_fd)
        try:
            with os.scandir(listing) as scan:
                for entry in scan:
                    if is_meta(node.path, entry.name):
                        continue
                    if not entry.is_file(follow_symlinks=False):
                        names.add(entry.name)  # directories, symlinks, special files
                    elif (shown := plain_file_name(entry.name)) is not None:
                        names.add(shown)
        finally:
            os.close(listing)
        names.update(
            path.rpartition("/")[2]
            for n in self.table.unpublished
            for path in n.names
            if path.rpartition("/")[0] == node.path
        )
        return sorted(names)

    @fuse_errors
    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        """`.` and `..` first (offsets 1 and 2), then the snapshot; a read from the start
        (opendir, rewinddir) takes a new snapshot, so it shows the directory as it is now."""
        listing = self._dirs[fh]
        directory = listing.node
        if directory.path is None:
            return  # removed: nothing in it, and `.`/`..` are gone with it
        for offset, dot in ((1, "."), (2, "..")):
            if start_id < offset:
                ino = self._dot_ino(directory, dot)
                if not pyfuse3.readdir_reply(token, dot.encode(), _dot_attributes(ino), offset):
                    return
        with self.table.dir_at(directory) as dir_fd:
            if start_id == 0 or listing.names is None:  # (a seekdir on a new handle)
                listing.names = self._list(directory, dir_fd)
            names = listing.names
            for index in range(max(start_id - 2, 0), len(names)):
                try:
                    node, st = self._lookup(directory, names[index], dir_fd)
                    attrs = self._attributes(node, st, dir_fd, names[index])
                except (pyfuse3.FUSEError, FileNotFoundError):
                    continue  # removed since the snapshot
                if not pyfuse3.readdir_reply(token, os.fsencode(names[index]), attrs, index + 3):
                    break
                node.lookups += 1

    def _dot_ino(self, directory: Node, dot: str) -> int:
        """The inode number `.` or `..` of `directory` shows (the kernel takes no lookup)."""
        if dot == "." or not directory.path:
            return directory.ino
        parent = self.table.by_path.get(directory.path.rpartition("/")[0])
        return parent.ino if parent is not None else pyfuse3.ROOT_INODE

    @fuse_errors
    async def releasedir(self, fh: int) -> None:
        self._dirs.pop(fh, None)

    @fuse_errors
    async def fsyncdir(self, fh: int, datasync: bool) -> None:
        node = self._dirs[fh].node
        await self.publisher.publish_all()
        if node.path is not None:
            with self.table.dir_at(node) as dir_fd:
                await self.publisher.sync_dir(dir_fd)

    # --- files ----------------------------------------------------------------------------

    def _new_fh(self) -> int:
        fh = self._next_fh
        self._next_fh += 1
        return fh

    def _open_handle(
        self, node: Node, content: FileContent, direct: bool, flags: int, uid: int
    ) -> pyfuse3.FileInfo:
        content.handles += 1
        if direct:
            content.kernel_cached = False  # created or truncated: no page of it is cached
        fh = self._new_fh()
        writes_around = direct or directio.bypasses_cache(flags)
        writable = bool(flags & _WRITE_MODES)
        self._handles[fh] = Handle(node, content, writes_around, uid != 0, writable=writable)
        if writable:
            self._writers[node.ino] += 1
        return pyfuse3.FileInfo(fh=fh, keep_cache=True, direct_io=direct)

    @fuse_errors
    async def create(
        self, parent_inode: int, name: bytes, mode: int, flags: int, ctx: pyfuse3.RequestContext
    ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        node = self._create_file(parent_inode, name, mode, ctx)
        async with self._changing(node.ino):  # stores for a number an older file had
            info = self._open_handle(
                node, node.content, directio.qualifies(flags, fresh=True), flags, ctx.uid
            )
        return info, self._remember(node)

    def _create_file(
        self, parent_inode: int, name: bytes, mode: int, ctx: pyfuse3.RequestContext
    ) -> Node:
        with self._new_entry(parent_inode, name, Kind.FILE) as (dir_fd, path, _):
            uid, gid = self._owner(dir_fd, ctx)
            touch_dir(dir_fd)
        file_mode = stat.S_IFREG | (stat.S_IMODE(mode) & ~ctx.umask)
        node = self.table.node_for(path, Kind.FILE)
        self.table.attach(node, FileContent.create(self.env, file_mode, uid, gid))
        self.table.unpublished.add(node)
        return node

    @fuse_errors
    async def mknod(
        self, parent_inode: int, name: bytes, mode: int, rdev: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        if stat.S_ISREG(mode):
            node = self._create_file(parent_inode, name, mode, ctx)
            assert node.content is not None
            await node.content.finalize()
            return self._remember(node)
        # A FIFO, socket or device holds no data: the same node in the store gives nothing away.
        with self._new_entry(parent_inode, name, Kind.SPECIAL) as (dir_fd, path, entry):
            os.mknod(entry, stat.S_IFMT(mode) | 0o600, rdev, dir_fd=dir_fd)
            self._make_own(dir_fd, entry, mode, ctx)
            return self._remember(self.table.node_for(path, Kind.SPECIAL), dir_fd)

    @fuse_errors
    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        node = self.table.get(inode)
        if node.kind is not Kind.FILE:
            raise pyfuse3.FUSEError(errno.EISDIR if node.kind is Kind.DIR else errno.ELOOP)
        truncate = bool(flags & os.O_TRUNC and flags & _WRITE_MODES)
        direct = directio.qualifies(flags, fresh=truncate)
        if flags & _WRITE_MODES:
            async with self._changing(node.ino):  # the handle then counts as a writer
                return await self._open(node, flags, ctx, truncate, direct)
        return await self._open(node, flags, ctx, truncate, direct)

    async def _open(
        self, node: Node, flags: int, ctx: pyfuse3.RequestContext, truncate: bool, direct: bool
    ) -> pyfuse3.FileInfo:
        if not truncate:
            return self._open_handle(node, self._content(node), direct, flags, ctx.uid)
        async with self._locked_content(node) as content:
            content.truncate(0)
            if ctx.uid != 0:  # as truncate(2) would; the kernel leaves O_TRUNC's to us
                content.kill_privileges()
            return self._open_handle(node, content, direct, flags, ctx.uid)

    @fuse_errors
    async def read(self, fh: int, off: int, size: int) -> Buffer:
        if self.env.encrypt_only:  # not even what this mount wrote: it is the store's now
            raise pyfuse3.FUSEError(errno.EACCES)
        handle = self._handles[fh]
        content = handle.content
        ino = handle.node.ino
        await _acquire(content.lock)
        try:
            content.kernel_cached = True
            # An O_DIRECT reader keeps no page; a writer's pages must not be overwritten.
            stores = not handle.direct and ino not in self._writers
            around = functools.partial(self.pages.around, ino, off, size) if stores else None
            with about(handle.node.path):
                return content.read(off, size, around)
        finally:
            content.lock.release()

    @fuse_errors
    async def write(self, fh: int, off: int, buf: Buffer) -> int:
        """`buf` may be borrowed: it is valid only until this returns, so nothing keeps it."""
        handle = self._handles[fh]
        content = handle.content
        await _acquire(content.lock)
        try:
            with about(handle.node.path):
                await content.wait_writable(len(buf))
                content.write(off, buf)
            handle.wrote = True
            if handle.direct and handle.unprivileged:
                content.kill_privileges()
            stale = handle.direct and content.kernel_cached
            content.kernel_cached = not handle.direct
        finally:
            content.lock.release()
        if stale:
            await directio.drop_cached_pages(handle.node.ino)
        return len(buf)

    @fuse_errors
    async def flush(self, fh: int) -> None:
        """close(2) of any descriptor: errors such as ENOSPC must reach it, but nothing is
        published here (I3): a `dup`'ed descriptor or a forked child's copy closes while the
        file is still written through the others, and they all share this one handle.

        So the staged changes of a handle that wrote are sealed into a provisional version
        (published at the last release, dropped if saving fails), also while other handles are
        open (or their failure would reach nobody), and a stream reserves the room its seal needs:
        sealing it here would force the rest of the file off the fast path (dd closes a
        descriptor it is about to write to after dup2).
        """
        handle = self._handles[fh]
        content = handle.content
        if handle.node.path is None:
            return  # unlinked: nothing will ever be saved, nothing to report
        async with content.lock:
            with about(handle.node.path):
                await content.check_stream()
                if handle.wrote:
                    await content.seal_staged()
                    handle.wrote = False

    @fuse_errors
    async def release(self, fh: int) -> None:
        handle = self._handles.pop(fh)
        content = handle.content
        content.handles -= 1
        if handle.writable:
            self._count_out(handle.node.ino)
        failed = False
        if content.handles == 0:
            async with content.lock:
                failed = not await self._save(handle.node, content, journal=True)
        self.table.drop_if_unused(handle.node)
        if failed:  # the kernel may hold pages and a size of the changes just given up
            await directio.drop_cached_pages(handle.node.ino)

    async def _save(self, node: Node, content: FileContent, journal: bool = False) -> bool:
        """Publish what the last handle leaves (later, with its group; a small change as a
        journal record with `journal`, now); False if it was lost.

        Nobody is left to tell of a failure: the last version a writer intended stays, and the
        log says what was lost. A file without a name is never sealed (it would fill the disk
        with a version nobody can open).
        """
        if node.path is None:
            content.abandon_changes()
            return True
        try:
            await content.finalize(journal)  # writes through mmap can arrive after flush
        except (OSError, AgeError) as exc:
            log.error("%s: changes lost, could not be saved: %s", shown(node.path), exc)
        except Exception:  # a bug: still say which file lost what, and keep serving
            log.exception("%s: changes lost, internal error while saving", shown(node.path))
        else:
            return True
        content.abandon_changes()
        return False

    @fuse_errors
    async def fsync(self, fh: int, datasync: bool) -> None:
        handle = self._handles[fh]
        if handle.node.path is None:
            return  # unlinked: nothing will ever be published
        async with handle.content.lock:
            with about(handle.node.path):
                await handle.content.finalize(journal=True, fsync=True)
                await self.publisher.publish_now(handle.node)
                await handle.content.sync_attributes()

    # --- names: unlink, rename, links -----------------------------------------------------

    @fuse_errors
    async def unlink(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        parent = self.table.get(parent_inode)
        text = os.fsdecode(name)
        with self.table.dir_at(parent) as dir_fd:
            node, st = self._lookup(parent, text, dir_fd)
            if not self._names_to_find(node):  # nothing to wait for: one walk, one lookup
                await self._unlink(parent, text, node, st, dir_fd)
                return
        await self._find_other_names(node)
        with self.table.dir_at(parent) as dir_fd:
            node, st = self._lookup(parent, text, dir_fd)
            await self._unlink(parent, text, node, st, dir_fd)

    async def _unlink(
        self, parent: Node, text: str, node: Node, st: os.stat_result | None, dir_fd: int
    ) -> None:
        """Remove the entry `text` of `parent` (in `dir_fd`), found as `node` with backing
        stat `st` (None: not published yet)."""
        assert parent.path is not None
        if node.kind is Kind.DIR:
            raise pyfuse3.FUSEError(errno.EISDIR)
        entry = backing_name(text, node.kind)
        async with _freed_off_the_loop() as held:
            if st is None or st.st_blocks * 512 >= reclaim.LARGE:  # (the lookup's stat)
                held.take(entry, dir_fd)
            if node in self.table.unpublished:
                _remove_shadowed(dir_fd, entry)
            else:
                os.unlink(entry, dir_fd=dir_fd)
            self.table.unname(node, join(parent.path, text), st)
            _changed(node)
            await self._drop_records(node, dir_fd)

    def _names_to_find(self, node: Node) -> bool:
        return node.content is not None and self.table.missing_names(node)

    async def _find_other_names(self, node: Node) -> None:
        """Before an open file loses the last name this mount knows: its other names in the
        store, which its handles' changes must still reach."""
        if self._names_to_find(node):
            await self.table.find_names(node)

    @fuse_errors
    async def rename(
        self,
        parent_inode_old: int,
        name_old: bytes,
        parent_inode_new: int,
        name_new: bytes,
        flags: int,
        ctx: pyfuse3.RequestContext,
    ) -> None:
        if flags & ~pyfuse3.RENAME_NOREPLACE:
            raise pyfuse3.FUSEError(errno.EINVAL)  # RENAME_EXCHANGE, RENAME_WHITEOUT, unknown
        old_parent = self.table.get(parent_inode_old)
        new_parent = self.table.get(parent_inode_new)
        old_name, new_name = os.fsdecode(name_old), os.fsdecode(name_new)
        check_name(new_name)
        if is_meta(new_parent.path, new_name):
            raise pyfuse3.FUSEError(errno.EACCES)
        with self.table.dir_at(new_parent) as new_fd:
            found = self.table.probe(new_parent, new_name, new_fd)
        replaced = self.table.by_path.get(found[0]) if found is not None else None
        if replaced is not None:  # an open file losing its last known name keeps its others
            await self._find_other_names(replaced)
        if old_parent.path is not None and new_parent.path is not None:
            new_path = join(new_parent.path, new_name)
            await self._record_moves(join(old_parent.path, old_name), new_path)
        with self.table.dir_at(old_parent) as old_fd, self.table.dir_at(new_parent) as new_fd:
            source, _ = self._lookup(old_parent, old_name, old_fd)
            target = self.table.probe(new_parent, new_name, new_fd)
            if target is not None and flags & pyfuse3.RENAME_NOREPLACE:
                raise pyfuse3.FUSEError(errno.EEXIST)
            assert new_parent.path is not None and old_parent.path is not None
            old_path = join(old_parent.path, old_name)
            new_path = join(new_parent.path, new_name)
            if new_path == old_path:
                return
            if source.kind is Kind.DIR and (new_path + "/").startswith(old_path + "/"):
                raise pyfuse3.FUSEError(errno.EINVAL)
            replaced = self._check_replace(source, target)
            if replaced is source:
                return  # two names of one file: POSIX leaves both
            if self.table.backing_taken(new_fd, new_parent.path, new_name, source.kind):
                raise pyfuse3.FUSEError(errno.EEXIST)
            old = (old_fd, backing_name(old_name, source.kind))
            new = (new_fd, backing_name(new_name, source.kind))
            async with _freed_off_the_loop() as held:
                if replaced is not None:
                    self._unlink_replaced(new_fd, new_name, replaced, new[1], held)
                self._rename_backing(source, old, new, held)  # may fail: ENOTEMPTY
                if replaced is not None:
                    assert target is not None
                    self.table.unname(replaced, new_path, target[2])
                    _changed(replaced)
                    await self._drop_records(replaced, new_fd)
                self.table.move(source, old_path, new_path)

    async def _record_moves(self, old_path: str, new_path: str) -> None:
        """Files with journal records at or under `old_path` get a record naming their path
        after the rename, before it: a crash on either side of it leaves them found."""
        for content in list(self.env.journaled):
            node = content.node
            if node is None or node.content is not content or node.path is None:
                continue
            for path in node.names:  # a linked file's records name all its names
                if path == old_path or path.startswith(old_path + "/"):
                    async with content.lock:
                        await content.record_move(new_path + path[len(old_path) :])
                    break

    async def _drop_records(self, node: Node, dir_fd: int) -> None:
        """A name removed from the namespace. The file's last: its records are dropped once the
        removal is durable (else a crash could bring back the file without its last fsync'ed
        changes), by the publisher's next round. One of several: a record names a name it
        keeps, for recovery to find."""
        content = node.content
        if content is not None and content.records and node.path is not None:
            async with content.lock:
                await content.record_move(node.path)
            return
        base = content.forget_records() if content is not None else None
        if base is None or content is None:
            return
        if self.env.journal is not None:
            self.publisher.drop_records_later(base, open_listing(dir_fd))
        async with content.lock:  # its overlay was kept for the records: nobody can save it now
            if node.path is None and content.handles == 0:
                content.abandon_changes()
        self.table.drop_if_unused(node)

    def _check_replace(self, source: Node, target: Probed | None) -> Node | None:
        """The node a rename replaces, after POSIX's checks on what may replace what."""
        if target is None:
            return None
        path, kind, st = target
        if source.kind is Kind.DIR and kind is not Kind.DIR:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        if source.kind is not Kind.DIR and kind is Kind.DIR:
            raise pyfuse3.FUSEError(errno.EISDIR)
        if kind is Kind.DIR and self.table.has_unpublished_below(path):
            raise pyfuse3.FUSEError(errno.ENOTEMPTY)
        return self.table.node_for(path, kind, st)

    @staticmethod
    def _unlink_replaced(
        dir_fd: int, name: str, replaced: Node, new_entry: str, held: reclaim.Held
    ) -> None:
        """A rename's target whose backing name differs from the source's (a symlink replaced
        by a file, or the reverse) goes first; one with the same name is renamed over."""
        entry = backing_name(name, replaced.kind)
        if entry != new_entry:
            held.take(entry, dir_fd)
            with contextlib.suppress(FileNotFoundError):  # an unpublished file may have none
                os.unlink(entry, dir_fd=dir_fd)

    def _rename_backing(
        self, source: Node, old: tuple[int, str], new: tuple[int, str], held: reclaim.Held
    ) -> None:
        """Rename on disk; `held` takes every large file that loses its last name here."""
        if source in self.table.unpublished:
            # Not on disk yet: its version will be published under the new name. A file it
            # replaces stays on disk until then, as the old version a crash may leave.
            held.take(old[1], old[0])
            _remove_shadowed(*old)
            touch_dir(new[0])
            return
        held.take(new[1], new[0])  # whatever the rename replaces, shadowed by a new file or not
        os.rename(old[1], new[1], src_dir_fd=old[0], dst_dir_fd=new[0])

    @fuse_errors
    async def symlink(
        self, parent_inode: int, name: bytes, target: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        with self._new_entry(parent_inode, name, Kind.SYMLINK) as (dir_fd, path, entry):
            os.symlink(os.fsdecode(target), entry, dir_fd=dir_fd)
            os.chown(entry, *self._owner(dir_fd, ctx), dir_fd=dir_fd, follow_symlinks=False)
            return self._remember(self.table.node_for(path, Kind.SYMLINK), dir_fd)

    @fuse_errors
    async def link(
        self, inode: int, new_parent_inode: int, new_name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        """A hard link in the store too: every name of a file is a link to one backing file,
        and every new version reaches every name (publisher.py, store/links.py). A file not
        yet published gets its names in the store at its publish."""
        node = self.table.get(inode)
        if node.kind is Kind.DIR:
            raise pyfuse3.FUSEError(errno.EPERM)
        with self._new_entry(new_parent_inode, new_name, node.kind) as (dir_fd, path, entry):
            content = node.content
            if content is not None and content.records:  # recovery then finds every name
                async with content.lock:
                    await content.record_move(path)
            if node in self.table.unpublished:
                touch_dir(dir_fd)
                node.nlink = len(node.names) + 1
            else:
                with self.table.at(node.path, node.kind) as (source_fd, source):
                    os.link(
                        source, entry, src_dir_fd=source_fd, dst_dir_fd=dir_fd,
                        follow_symlinks=False,
                    )
                st = os.lstat(entry, dir_fd=dir_fd)
                node.nlink = self.table.link_count(st)
                self.table.set_backing(node, st)
            self.table.add_name(node, path)
            _changed(node)
        return self._remember(node)

    # --- extended attributes: never stored, since they would sit on disk in plaintext (I1) --

    @fuse_errors
    async def setxattr(
        self, inode: int, name: bytes, value: bytes, ctx: pyfuse3.RequestContext
    ) -> None:
        raise pyfuse3.FUSEError(errno.ENOTSUP)

    # ENOSYS, not ENODATA and an empty list: the kernel then answers every later call itself
    # (EOPNOTSUPP) instead of asking us, e.g. for security.capability before each file's first
    # write, one request in seven of an untar.

    @fuse_errors
    async def getxattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> bytes:
        raise pyfuse3.FUSEError(errno.ENOSYS)

    @fuse_errors
    async def listxattr(self, inode: int, ctx: pyfuse3.RequestContext) -> list[bytes]:
        raise pyfuse3.FUSEError(errno.ENOSYS)

    @fuse_errors
    async def removexattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        raise pyfuse3.FUSEError(errno.ENOTSUP)

    # --- shutdown -------------------------------------------------------------------------

    async def save_everything(self) -> None:
        """Seal every file with unsaved changes and publish them all (unmount, SIGTERM)."""
        for node in list(self.table.nodes.values()):
            content = node.content
            if content is not None and (content.dirty or content.provisional is not None):
                async with content.lock:
                    await self._save(node, content)
        await self.publisher.publish_all(last=True)
        await self.publisher.drop_records()


@contextlib.asynccontextmanager
async def _freed_off_the_loop() -> AsyncIterator[reclaim.Held]:
    """Large files whose last name a request removes are freed when it ends: on a worker
    thread that the request waits for (its caller expects the space back), so that the event
    loop serves other requests meanwhile. Freeing 1 GiB took 1.1-1.4 s here."""
    held = reclaim.Held()
    try:
        yield held
    finally:
        if held:
            try:
                await trio.to_thread.run_sync(held.free)
            finally:
                held.free()  # a no-op, unless the request was cancelled before the thread ran


async def _acquire(lock: trio.Lock) -> None:
    """Take `lock` without a pass through the scheduler when it is free. `async with` always
    makes one: 20 µs, a third of what the daemon spends on a 32 KiB write from a pipe."""
    try:
        lock.acquire_nowait()
    except trio.WouldBlock:
        await lock.acquire()


def _remove_shadowed(dir_fd: int, entry: str) -> None:
    """An unpublished file leaves its name: drop the older file it had replaced there. The
    directory changes now, whether there was one or not."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(entry, dir_fd=dir_fd)
    touch_dir(dir_fd)


def _changed(node: Node) -> None:
    """A name of the file came or went: its ctime moves (the backing entry's own moved on
    disk; an open file shows its content's attributes)."""
    if node.content is not None:
        node.content.attrs.st_ctime_ns = time.time_ns()


def _absent() -> pyfuse3.EntryAttributes:
    """A lookup's answer for a name that does not exist, which the kernel keeps for the entry
    timeout (a negative entry), as it keeps names that do: names change only through this
    mount (the store is locked), and the kernel updates its entry at each create, mkdir, link,
    rename and unlink. SQLite looks for its `-journal` and `-wal` at every transaction, and
    the kernel looks a name up before it creates it: two lookups per rollback commit less."""
    attrs = pyfuse3.EntryAttributes()
    attrs.st_ino = 0
    attrs.entry_timeout = ATTR_TIMEOUT
    return attrs


def _dot_attributes(ino: int) -> pyfuse3.EntryAttributes:
    """Enough for a `.` or `..` entry: the kernel reads only its number and type."""
    attrs = pyfuse3.EntryAttributes()
    attrs.st_ino = ino
    attrs.st_mode = stat.S_IFDIR
    return attrs
