"""Group publishing (I3): sealed versions reach their backing names in batches.

Every `interval` seconds the versions sealed since the last round are made durable with one
`syncfs`, renamed over their backing files, and their directories fsync'ed. An fsync from an
application publishes its file at once instead. Until its rename, a version is served from its
temp file, so nothing about publishing is visible through the mount.
"""

import contextlib
import errno
import logging
import os
import time

import trio

from cagefs.age import AgeError
from cagefs.fs import heap
from cagefs.fs.activity import ACTIVITY
from cagefs.fs.content import FileContent
from cagefs.fs.env import Env
from cagefs.fs.errors import about, shown
from cagefs.fs.inodes import InodeTable, Kind, Node
from cagefs.store import links, reclaim
from cagefs.store.journal import Journal
from cagefs.store.paths import fsync_dirs, link_over, open_listing, rename_into
from cagefs.store.versions import NewVersion, syncfs

log = logging.getLogger("cagefs")
MAX_JOURNALED = 256  # default: files with journal records past this are folded without waiting
STARVED_RETRY = 0.1  # seconds between tries to fold a file for slots, while none is free


class Publisher:
    def __init__(self, env: Env, table: InodeTable, interval: float) -> None:
        self._env = env
        self._table = table
        self._interval = interval
        self._lock = trio.Lock()
        self._replaced: list[int | None] = []  # files renamed over, held until durable
        self._reported: set[str] = set()  # versions whose failure to publish was logged
        self._obsolete: list[bytes] = []  # bases whose records a published version replaced
        self._fold_failed: set[FileContent] = set()  # logged once, retried every round
        # Linked files' publishes (with their version's inode), done once durable.
        self._intents: list[tuple[links.Intent, tuple[int, int]]] = []
        # Records to drop at the next round: of files removed since (with the directory to
        # fsync first), or made obsolete by a version an fsync published (durable already).
        self._removed: list[tuple[bytes, int | None]] = []
        # Store directories (st_dev, st_ino) fsync'ed when the mount's namespace changes
        # stood at `_durable_at`: while they stand there, an fsync of one has nothing to do.
        self._durable: set[tuple[int, int]] = set()
        self._durable_at = -1

    async def run(self) -> None:
        while True:
            await trio.sleep(self._interval)
            try:
                await self.drop_records()
                await self.publish_all()
                heap.give_back_when_kept()  # what a burst of writes or reads freed
                await trio.to_thread.run_sync(self._env.sealers.trim_idle)
            except Exception:  # never let one round stop the mount (I10); the next one retries
                log.exception("internal error while publishing")

    async def publish_all(self, last: bool = False) -> None:
        """Publish every queued version: one syncfs for the group, then the renames.

        A version that cannot be published (its backing name is taken by a directory, its
        directory is gone) is logged by name and stays pending, served and retried next round;
        with `last` (unmount) it is kept aside in `.cagefs/recovered/` instead, never lost.
        """
        async with self._lock:
            batch = [(c, c.pending) for c in self._env.publish_queue if c.pending is not None]
            self._env.publish_queue.clear()
            if not batch:
                return
            for content, _ in batch:
                await self._find_names(content)
            try:
                root_fd = os.open(self._env.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
                try:
                    await trio.to_thread.run_sync(syncfs, root_fd)
                finally:
                    os.close(root_fd)
            except OSError as exc:
                log.error("publishing: could not make new versions durable: %s", exc.strerror)
                self._env.publish_queue.update(c for c, _ in batch)
                return
            dests = []
            for content, version in batch:
                try:
                    dests += self._claim(content, version)
                except OSError as exc:
                    self._not_published(content, version, exc, last)
            synced = True
            if dests:
                try:
                    await self._fsync_dirs(dests)
                except OSError as exc:
                    log.error("publishing: could not sync a directory: %s", exc.strerror)
                    synced = False
            await self._drop_obsolete_records(synced)
            self._let_go_of_replaced()

    async def publish_now(self, node: Node) -> None:
        """fsync(2): this file's sealed version becomes durable under its name before we return."""
        content = node.content
        version = content.pending if content else None
        if content is None or version is None:
            return
        async with self._lock:
            await self._find_names(content)
            # The version carries the file's attributes (stamped at its seal and at every
            # change since): this fsync makes them durable too.
            carries_attributes = content.current is not None and content.current.fd == version.fd
            unsynced = content.attrs_unsynced
            if carries_attributes:
                content.attrs_unsynced = False  # (a change while this waits sets it again)
            try:
                await trio.to_thread.run_sync(os.fsync, version.fd)
            except BaseException:
                content.attrs_unsynced = content.attrs_unsynced or unsynced
                raise
            try:
                dests = self._claim(content, version)
            except OSError as exc:  # the caller's fsync fails; the version stays pending
                self._not_published(content, version, exc, last=False)
                raise OSError(errno.EIO, f"{shown(node.path)}: not published") from None
            try:
                await self._fsync_dirs(dests)
            except BaseException:
                self._obsolete.clear()  # left for the next mount's recovery to remove
                raise
            finally:
                self._let_go_of_replaced()
            # Not in this request: a file folded past its bound has thousands of records.
            folded, self._obsolete = self._obsolete, []
            self._removed += [(base, None) for base in folded]
        await self._free_slots_of(folded)

    async def _free_slots_of(self, folded: list[bytes]) -> None:
        """While no slot is free, a fold of a file holding slots frees them before the fsync
        returns: the writer's next record finds one, rather than being a file of its own
        (create, rename, directory fsync) for as long as a background round takes."""
        journal = self._env.journal
        if journal is None or not journal.slots.starved:
            return
        held = journal.slots.held()
        if not any(base in held for base in folded):
            return
        journal.slots.starved = False  # (a record that finds no slot sets it again)
        await self.drop_records()
        await trio.to_thread.run_sync(journal.slots.settle)

    async def _fsync_dirs(self, directories: list[int]) -> None:
        seen = ACTIVITY.namespace_changes
        self._note_durable(await trio.to_thread.run_sync(fsync_dirs, directories), seen)

    def _note_durable(self, directories: set[tuple[int, int]], seen: int) -> None:
        if seen > self._durable_at:
            self._durable, self._durable_at = set(), seen
        if seen == self._durable_at:
            self._durable |= directories

    async def sync_dir(self, dir_fd: int) -> None:
        """fsyncdir(2): the directory at `dir_fd` is durable when this returns. A directory
        fsync'ed since the mount last changed any name (a SQLite `-journal`'s directory, just
        synced by the journal's own publish) needs no second fsync. The fsync waits for the
        disk, so it is made off the event loop."""
        st = os.fstat(dir_fd)
        synced = (st.st_dev, st.st_ino) in self._durable
        if synced and ACTIVITY.namespace_changes == self._durable_at:
            return
        await self._fsync_dirs([open_listing(dir_fd)])

    async def compact(self, content: FileContent) -> None:
        """Fold a file's journal records into a new version, published now (I3); the records
        go once it is durable. A file still written since its last record waits (publishing
        that would make a state nobody intended durable)."""
        node = self._owner(content)
        if node is None:
            return
        async with content.lock:
            if not content.compactable or content.node is not node:
                return
            with about(node.path):
                await content.finalize()
                await self.publish_now(node)

    async def compact_when_idle(self, idle: float, max_files: int = MAX_JOURNALED) -> None:
        """Fold the records of files unchanged for `idle` seconds, and at once those of the
        oldest past `max_files` files with records. (A file whose records reached their
        bound is published whole at its next fsync already.)"""
        while True:
            journal = self._env.journal
            starved = journal is not None and journal.slots.starved
            await trio.sleep(min(idle, STARVED_RETRY if starved else 1.0))
            if journal is not None and journal.slots.starved:
                await self._free_slots(journal)
            now = time.monotonic()
            oldest_first = sorted(self._env.journaled, key=lambda c: c.changed_at)
            too_many = len(oldest_first) - max_files  # each holds its changes in memory (I7)
            for position, content in enumerate(oldest_first):
                if now - content.changed_at < idle and position >= too_many:
                    continue
                try:
                    await self.compact(content)
                    self._fold_failed.discard(content)
                except (OSError, AgeError) as exc:  # kept as records; retried next time (I10)
                    if content not in self._fold_failed:
                        self._fold_failed.add(content)
                        name = self._name(content)
                        log.error("%s: could not fold journal records (retrying): %s", name, exc)
                except Exception:
                    log.exception("%s: internal error folding journal records", self._name(content))
            self._fold_failed &= self._env.journaled

    async def _free_slots(self, journal: Journal) -> None:
        """Every slot is in use and the pool may not grow: fold the file whose records hold
        the most, so that its slots are zeroed and free again. (Measured with a 2 MiB pool,
        `fio` 4 KiB writes with `fsync=1` on 256 MiB: 175 IOPS this way, 91 with every later
        record a file of its own.) A file with changes not yet recorded is retried soon."""
        held = journal.slots.held()
        candidates = [c for c in self._env.journaled if c.base in held]
        if not candidates:
            return
        content = max(candidates, key=lambda c: held[c.base] if c.base else 0)
        try:
            await self.compact(content)  # (its publish frees the slots: _free_slots_of)
        except (OSError, AgeError) as exc:  # kept as records; the next record asks again
            journal.slots.starved = False
            log.error("%s: could not fold journal records: %s", self._name(content), exc)

    def _name(self, content: FileContent) -> str:
        node = self._owner(content)
        return shown(node.path if node else None)

    def drop_records_later(self, base: bytes, directory: int | None) -> None:
        """A file with journal records lost its last name in `directory` (an open descriptor,
        taken over): its records go at the next round (or unmount), once the removal is
        durable, not in the request (a SQLite `-journal` is deleted at every commit). Until
        then a crash leaves them, and recovery either finds the file back with them (the
        removal was not durable) or finds their base nowhere and removes them."""
        self._removed.append((base, directory))

    async def drop_records(self) -> None:
        """Drop the records handed to `drop_records_later` (each round, and at unmount)."""
        removed, self._removed = self._removed, []
        journal = self._env.journal
        if not removed or journal is None:
            return

        def drop() -> None:
            fsync_dirs([directory for _, directory in removed if directory is not None])
            for base, _ in removed:
                journal.drop(base)

        try:
            await trio.to_thread.run_sync(drop)
        except OSError as exc:  # left for the next mount's recovery to remove
            log.error("journal: could not drop the records of removed files: %s", exc.strerror)

    async def _drop_obsolete_records(self, durable: bool) -> None:
        """Records whose file has a newer version on disk, now durable, are removed (left
        for the next mount's recovery to remove if the directories could not be synced)."""
        bases, self._obsolete = self._obsolete, []
        journal = self._env.journal
        if durable and bases and journal is not None:
            for base in bases:
                await trio.to_thread.run_sync(journal.drop, base)

    async def _find_names(self, content: FileContent) -> None:
        """A new version must reach every name of a linked file: find those not known yet."""
        node = self._owner(content)
        if node is not None and self._table.missing_names(node):
            await self._table.find_names(node)

    def _claim(self, content: FileContent, version: NewVersion) -> list[int]:
        """Rename a durable version over its backing file; returns its directory (to fsync).

        The rename is done here, on the event loop, with the namespace as it is at this instant.

        Called without awaiting in between, so a concurrent rename or unlink is either fully
        before or fully after. Superseded versions are skipped (their successor is queued).
        """
        if content.pending is not version:
            return []
        node = self._owner(content)
        if node is None or node.path is None:
            content.discard_pending()
            if node is not None:
                self._table.drop_if_unused(node)  # nothing left to publish: let go of it
            return []
        if node.links:
            directories = self._claim_names(content, version, node)
        else:
            directories = [self._claim_name(content, version, node)]
            self._table.set_backing(node, None)
        ACTIVITY.namespace_changes += 1
        self._reported.discard(version.path)
        obsolete = content.published()
        if obsolete is not None:
            self._obsolete.append(obsolete)
        self._table.unpublished.discard(node)
        self._table.drop_if_unused(node)
        return directories

    def _claim_name(self, content: FileContent, version: NewVersion, node: Node) -> int:
        assert node.path is not None
        with self._table.at(node.path, Kind.FILE) as (dir_fd, name):
            directory = open_listing(dir_fd)
            held = reclaim.hold(name, dir_fd)
            try:
                renamed = rename_into(version.path, dir_fd, name)
            except BaseException:
                reclaim.close_later(held)
                os.close(directory)
                raise
            self._replaced.append(held)
            with contextlib.suppress(OSError):  # published all the same: only times are shown
                self._keep_ctimes(content, *renamed, dir_fd, name)
        return directory

    def _claim_names(self, content: FileContent, version: NewVersion, node: Node) -> list[int]:
        """Publish under every name of a linked file: the intent made durable first, then each
        name linked to the version and renamed over (store/links.py); a crash in between is
        finished at the next mount. The intent's fsync is done here, on the loop, so that no
        name changes meanwhile: tens of milliseconds, for linked files only."""
        names = [self._table.backing_entry(path, Kind.FILE) for path in node.names]
        intent = links.begin(self._env.root, version.path, names)
        directories: list[int] = []
        held = None
        try:
            for directory, name, temp in intent.names:
                with self._table.dirs.at(directory) as dir_fd:
                    directories.append(open_listing(dir_fd))
                    held = held if held is not None else reclaim.hold(name, dir_fd)
                    renamed = link_over(intent.version, dir_fd, name, temp)
                    with contextlib.suppress(OSError):  # only times are shown
                        self._keep_ctimes(content, *renamed, dir_fd, name)
        except BaseException:
            links.abandon(intent)  # names may be mixed until the retry: logged by the caller
            reclaim.close_later(held)
            for fd in directories:
                os.close(fd)
            raise
        self._replaced.append(held)
        version.remove()  # every name, and the intent, hold it now
        st = os.fstat(version.fd)
        self._intents.append((intent, (st.st_dev, st.st_ino)))
        self._table.intent_links[st.st_dev, st.st_ino] += 1
        node.nlink = len(node.names)
        self._table.set_backing(node, st)
        return directories

    def _keep_ctimes(
        self,
        content: FileContent,
        dir_before: os.stat_result,
        dir_after: os.stat_result,
        dir_fd: int,
        name: str,
    ) -> None:
        """The file and its directory keep showing the ctimes they had before the publish."""
        ctimes = self._table.ctimes
        ctimes.remember(dir_after, ctimes.shown(dir_before))
        ctimes.remember(os.lstat(name, dir_fd=dir_fd), content.attrs.st_ctime_ns)

    def _not_published(
        self, content: FileContent, version: NewVersion, exc: OSError, last: bool
    ) -> None:
        """Keep a version whose rename failed: pending (retried each round, logged once), or
        at unmount moved aside where the next mount does not remove it."""
        node = self._owner(content)
        name = shown(node.path if node else None)
        if last:
            try:
                kept = version.keep_aside(self._env.root)
            except OSError as aside:
                log.error(
                    "%s: could not publish (%s) nor keep aside (%s): changes lost",
                    name,
                    exc.strerror,
                    aside.strerror,
                )
                return
            log.error("%s: could not publish (%s): kept as %s", name, exc.strerror, kept)
            return
        if version.path not in self._reported:
            self._reported.add(version.path)
            log.error("%s: could not publish (%s): kept pending, retrying", name, exc.strerror)
        self._env.queue_publish(content)

    def _let_go_of_replaced(self) -> None:
        """The old versions are freed only now, so that freeing them (seconds for a large
        file on some filesystems) is not part of the wait for the new ones to be durable.
        Linked files' intents are done (after a failed directory sync too: a later mount must
        never put an older version back)."""
        reclaim.close_later(*self._replaced)
        self._replaced.clear()
        for intent, version in self._intents:
            links.finish(intent)
            self._table.intent_links[version] -= 1
            if not self._table.intent_links[version]:
                del self._table.intent_links[version]
        self._intents.clear()

    @staticmethod
    def _owner(content: FileContent) -> Node | None:
        node = content.node
        return node if node is not None and node.content is content else None
