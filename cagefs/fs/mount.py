"""Run the filesystem: mount, serve on trio until unmounted or signalled, save everything.

The daemon only ever exits after every unsaved change has been sealed and published, whether
it was stopped by `fusermount3 -u`, `cagefs umount`, SIGTERM or SIGINT.
"""

import functools
import logging
import os
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pyfuse3
import trio

from cagefs.errors import FuseUnavailableError
from cagefs.fs import heap
from cagefs.fs.activity import ACTIVITY
from cagefs.fs.cache import ChunkCache
from cagefs.fs.env import Env
from cagefs.fs.inodes import InodeTable
from cagefs.fs.operations import Operations
from cagefs.fs.publisher import MAX_JOURNALED, Publisher
from cagefs.fs.status import RecentErrors, serve_status, snapshot
from cagefs.fs.strategies import Policy, Strategy
from cagefs.store import links, reclaim
from cagefs.store.auth import FileAuth
from cagefs.store.filekeys import FileKeys
from cagefs.store.journal import Journal
from cagefs.store.sealer import SealerPool
from cagefs.store.slots import POOL_LIMIT
from cagefs.store.versions import NewVersion, ReadyVersions

if TYPE_CHECKING:
    from cagefs.store import Store
    from cagefs.store.lock import StoreLock

log = logging.getLogger("cagefs")
READ_AHEAD_KB = 1024
IDLE_CHECK = 5.0  # seconds between looks at a mount's activity, at most
SAVING_NOTICE = 10.0  # seconds between "still saving" calls while the final save runs


@dataclass
class MountOptions:
    strategy: str = "auto"
    read_only: bool = False
    allow_other: bool = False
    memory_threshold: int = 64 * 1024 * 1024
    cache_mib: int = 32
    publish_interval: float = 1.0
    accept_untagged: bool = False  # serve files without a proof of origin (read-only mounts)
    fsname: str = "cagefs"  # the source `mount`, `df` and `findmnt` show: the store's path
    kernel_flags: tuple[str, ...] = ()  # dev, suid, exec, noatime... as given with -o
    idle: float | None = None  # unmount after this many seconds with nothing open, no request
    status_socket: Path | None = None  # where `cagefs status` asks (fs/status.py)
    encrypt_only: bool = False  # no identity: create and write files, never read them
    compact_idle: float = 5.0  # fold a file's journal records once it is unchanged this long
    max_journaled: int = MAX_JOURNALED  # files with records past this: the oldest folded at once
    journal_slots_mib: int = POOL_LIMIT // (1024 * 1024)  # the journal's slot files, at most


def serve(
    store: "Store",
    lock: "StoreLock",
    mountpoint: str,
    options: MountOptions,
    on_ready: Callable[[], None],
    on_saving: Callable[[], None] = lambda: None,
) -> None:
    """Mount `store` on `mountpoint` and serve until unmounted; blocks. `on_saving` is called
    when the kernel side is gone and the final save starts, then every SAVING_NOTICE seconds
    until it ends (for a service manager's stop timeout).

    `lock` is the store's lock, taken by the caller (before forking, to refuse in front): only
    under it are temps in `.cagefs/tmp/` strays, not another daemon's unpublished versions.
    """
    lock.claim()
    if not options.read_only:
        finished, removed = links.recover(store.root)
        if finished:
            log.info("finished %d publish(es) of hard-linked files cut by a crash", finished)
        if removed:
            log.info("removed %d unpublished temp version(s) left by a crash", removed)
    heap.tune()
    keys = FileKeys(store.identities) if store.identities else None
    env = Env(
        root=store.root,
        identities=(keys,) if keys is not None else store.identities,
        recipients=store.recipients,
        auth=FileAuth(store.auth, options.accept_untagged),
        policy=Policy(Strategy(options.strategy), options.memory_threshold, store.root),
        cache=ChunkCache(options.cache_mib * 1024 * 1024),
        encrypt_only=options.encrypt_only,
        keys=keys,
        journal=_journal(store, options),
    )
    if not options.read_only:
        env.ready = ReadyVersions(
            env.root, functools.partial(NewVersion, env.root, env.recipients, env.auth, env.keys)
        )
    table = InodeTable(store.root)
    publisher = Publisher(env, table, options.publish_interval)
    operations = Operations(env, publisher, table)
    background: list[Callable[[], Awaitable[None]]] = [publisher.run, _stop_on_signals]
    if env.journal is not None:
        background.append(
            functools.partial(
                publisher.compact_when_idle, options.compact_idle, options.max_journaled
            )
        )
    if options.idle is not None:
        background.append(functools.partial(_unmount_when_idle, options.idle))
    recent_errors = RecentErrors()
    logging.getLogger().addHandler(recent_errors)
    if options.status_socket is not None:
        describe = functools.partial(
            snapshot, env, table, mountpoint, options.strategy, recent_errors
        )
        background.append(functools.partial(serve_status, options.status_socket, describe))
    try:
        pyfuse3.init(operations, mountpoint, _fuse_options(options))
    except RuntimeError as exc:
        raise FuseUnavailableError(f"cannot mount on {mountpoint}: {exc}") from None
    try:
        sealers = None if options.read_only else env.sealers  # nothing to seal on a ro mount
        trio.run(_main, operations, mountpoint, on_ready, on_saving, sealers, background)
    finally:
        operations.pages.close()  # no store may reach a closed session
        pyfuse3.close(unmount=True)
        env.sealers.close()
        if env.ready is not None:
            env.ready.close()
        reclaim.wait()
        if env.journal is not None:
            env.journal.close()
    log.info("unmounted %s", mountpoint)


def _journal(store: "Store", options: MountOptions) -> Journal | None:
    """Journal records need a mount that writes and can read back what it wrote."""
    if options.read_only or options.encrypt_only or store.auth is None:
        return None
    return Journal(
        store.root, store.recipients, store.auth, options.journal_slots_mib * 1024 * 1024
    )


def _fuse_options(options: MountOptions) -> set[str]:
    fuse_options = set(pyfuse3.default_options) | set(options.kernel_flags)
    fuse_options |= {f"fsname={_option_value(options.fsname)}", "subtype=cagefs"}
    if options.read_only:
        fuse_options.add("ro")
    if options.allow_other:
        fuse_options.add("allow_other")
    return fuse_options


def _option_value(text: str) -> str:
    """libfuse splits options at commas unless escaped; pyfuse3 takes ASCII only."""
    escaped = text.replace("\\", "\\\\").replace(",", "\\,")
    return escaped.encode("ascii", "replace").decode()


async def _main(
    operations: Operations,
    mountpoint: str,
    on_ready: Callable[[], None],
    on_saving: Callable[[], None],
    sealers: SealerPool | None,
    background: list[Callable[[], Awaitable[None]]],
) -> None:
    async with trio.open_nursery() as nursery:
        for task in background:  # the publisher, signals, --idle, the status socket
            nursery.start_soon(task)
        nursery.start_soon(_announce_ready, mountpoint, on_ready, sealers)
        await pyfuse3.main()
        # The kernel side is gone (unmounted or terminated): save, then stop the helpers.
        nursery.start_soon(_repeat, on_saving, SAVING_NOTICE)
        await operations.save_everything()
        nursery.cancel_scope.cancel()


async def _repeat(call: Callable[[], None], interval: float) -> None:
    while True:
        call()
        await trio.sleep(interval)


async def _unmount_when_idle(idle: float) -> None:
    """--idle: no handle open and no request for `idle` seconds → unmount, as on SIGTERM
    (everything unsaved is then saved)."""
    while (quiet := ACTIVITY.idle_for()) < idle:
        await trio.sleep(min(idle - quiet, IDLE_CHECK))
    log.info("idle for %.0f s: saving and unmounting", idle)
    pyfuse3.terminate()


async def _stop_on_signals() -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            log.info("received %s: saving and unmounting", signal.Signals(signum).name)
            pyfuse3.terminate()
            return


async def _announce_ready(
    mountpoint: str, on_ready: Callable[[], None], sealers: SealerPool | None
) -> None:
    """Once requests are being served: raise readahead, tell whoever waits for us, then start
    a sealer process ahead of the first large file (unless nothing can be written)."""
    st = await trio.to_thread.run_sync(os.stat, mountpoint)
    _raise_read_ahead(st.st_dev)
    on_ready()
    if sealers is not None:
        await trio.to_thread.run_sync(sealers.warm)


def _raise_read_ahead(dev: int) -> None:
    """The kernel sends reads only as large as readahead (128 KiB by default); 1 MiB is faster."""
    path = f"/sys/class/bdi/{os.major(dev)}:{os.minor(dev)}/read_ahead_kb"
    try:
        with open(path, "w") as f:
            f.write(str(READ_AHEAD_KB))
    except OSError as exc:
        log.debug("could not raise readahead (%s)", exc.strerror)
