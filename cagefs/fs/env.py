"""What every part of the filesystem shares: the store's keys, the strategy, the chunk cache,
the sealer processes, and the queue of versions waiting for their group publish."""

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from cagefs.age import Identity, Recipient
from cagefs.fs.cache import ChunkCache
from cagefs.fs.handoff import Handoff
from cagefs.fs.staging import PartialBudget
from cagefs.fs.strategies import Policy
from cagefs.store.auth import FileAuth
from cagefs.store.filekeys import FileKeys
from cagefs.store.journal import Journal
from cagefs.store.sealer import SealerPool
from cagefs.store.versions import NewVersion, ReadyVersions

if TYPE_CHECKING:
    from cagefs.fs.content import FileContent


@dataclass
class Env:
    root: Path
    identities: Sequence[Identity]
    recipients: Sequence[Recipient]
    auth: FileAuth
    policy: Policy
    cache: ChunkCache
    # No identity, only recipients and the authentication key: files can be created and
    # written, never read or edited (a backup target that cannot read what it keeps).
    encrypt_only: bool = False
    keys: FileKeys | None = None  # in `identities` too: new versions' keys go in (filekeys.py)
    sealers: SealerPool = field(default_factory=SealerPool)
    publish_queue: "set[FileContent]" = field(default_factory=set)
    journal: Journal | None = None  # None: no records (read-only, encrypt-only)
    journaled: "set[FileContent]" = field(default_factory=set)  # contents with records
    # Where records are written: one hop per fsync, cheaper than trio.to_thread (handoff.py).
    record_writers: Handoff = field(default_factory=lambda: Handoff("cagefs-records", 4))
    ready: ReadyVersions | None = None  # new versions made ahead (read-only mounts: none)
    partials: PartialBudget = field(default_factory=PartialBudget)  # over every file's overlay

    def new_version(self) -> NewVersion:
        if self.ready is not None:
            return self.ready.take()
        return NewVersion(self.root, self.recipients, self.auth, self.keys)

    def queue_publish(self, content: "FileContent") -> None:
        self.publish_queue.add(content)
