"""`cagefs mount STORE MOUNTPOINT`: check everything that can be checked, then serve.

Every refusal (bad option, unusable mount point, no /dev/fuse, missing store, wrong key) happens
before forking, as one line, with nothing mounted. The command returns only once the mount is
usable; with -f it stays in front until unmounted.
"""

import argparse
import contextlib
import logging
import os
import re
import sys
import time
import types
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from cagefs.cli.keyargs import add_identity_arguments, open_store_from
from cagefs.cli.mountopts import parse_mount_options
from cagefs.cli.mounts import (
    fallback_log_file,
    is_mount_point,
    mount_path,
    status_socket,
    wait_for_exit,
)
from cagefs.errors import FuseUnavailableError, MountPointError, UsageError

if TYPE_CHECKING:  # the rest is loaded by `run`: other verbs should not pay for it at start-up
    from cagefs.fs.mount import MountOptions
    from cagefs.store import Store
    from cagefs.store.lock import StoreLock

log = logging.getLogger(__name__)
T = TypeVar("T")
STRATEGY_ENV = "CAGEFS_STRATEGY"
SAVING_PATIENCE = 60.0
_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([smhd]?)", re.IGNORECASE)
_DURATION_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
_SIZE = re.compile(r"(\d+)\s*([KMGT]?)(?:i?B)?", re.IGNORECASE)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("mount", help="mount a store")
    parser.add_argument("store", metavar="STORE", type=Path)
    parser.add_argument("mountpoint", metavar="MOUNTPOINT")
    add_identity_arguments(parser)
    parser.add_argument(
        "--strategy",
        type=CONVERTERS["strategy"],
        metavar="NAME",
        help=f"write strategy: auto, stream, memory or tempfile (default: ${STRATEGY_ENV}, config)",
    )
    parser.add_argument(
        "-f", "--foreground", action="store_true", help="stay in front and log to stderr"
    )
    parser.add_argument(
        "-o",
        dest="options",
        action="append",
        default=[],
        metavar="OPTIONS",
        help="comma-separated: ro, allow_other, kernel flags (dev, suid, exec, noatime...), "
        "fsname=NAME, and every flag here as NAME=VALUE (passfile=FILE, identity=FILE, "
        "strategy=NAME...); mount(8)'s own (rw, auto, nofail, _netdev, x-*...) are ignored",
    )
    parser.add_argument("--sloppy", action="store_true", help=argparse.SUPPRESS)  # mount -s
    parser.add_argument(
        "--memory-threshold",
        type=CONVERTERS["memory_threshold"],
        metavar="SIZE",
        help="files up to SIZE are staged in RAM (e.g. 64M)",
    )
    parser.add_argument(
        "--cache-mib",
        type=CONVERTERS["cache_mib"],
        metavar="N",
        help="decrypted chunk cache, MiB",
    )
    parser.add_argument(
        "--publish-interval",
        type=CONVERTERS["publish_interval"],
        metavar="S",
        help="seconds between grouped publishes",
    )
    parser.add_argument(
        "--log", metavar="FILE", help="log to FILE (default: stderr with -f, else syslog)"
    )
    parser.add_argument(
        "--accept-untagged",
        action="store_true",
        help="with -o ro: also serve files without the store's proof of origin (a migration)",
    )
    parser.add_argument(
        "--idle",
        type=parse_duration,
        metavar="DURATION",
        help="unmount (saving everything) after DURATION with no open file and no request, "
        "e.g. 90s, 30m, 2h",
    )
    parser.add_argument(
        "--compact-idle",
        type=parse_duration,
        metavar="DURATION",
        help="fold a file's change-journal records into a new version of it once it has been "
        "unchanged this long (default 5s)",
    )
    parser.add_argument(
        "--max-journaled-files",
        type=CONVERTERS["max_journaled"],
        dest="max_journaled",
        metavar="N",
        help="files that may hold change-journal records at once (each keeps its changes in "
        "memory); past N the oldest are folded at once (default 256)",
    )
    parser.add_argument(
        "--journal-slots-mib",
        type=CONVERTERS["journal_slots_mib"],
        metavar="MIB",
        help="disk the change journal's preallocated slot files may take (default 64); "
        "when they are all in use, the file holding most of them is folded to free them",
    )
    parser.add_argument(
        "--encrypt-only",
        action="store_true",
        help="no identity: create and write files (to config.toml's recipients), never read "
        "them; needs --auth-key-file",
    )
    parser.add_argument(
        "--auth-key-file",
        metavar="FILE",
        help="the store's authentication key for --encrypt-only (cagefs recipients "
        "export-auth-key)",
    )
    parser.add_argument("--debug", action="store_true", help="log every request")
    parser.set_defaults(run=run, read_only=False, allow_other=False, fsname=None)


def setting(name: str, parse: Callable[[str], object], what: str) -> Callable[[str], object]:
    """An argparse type for a setting that config.toml also has: the same check for both, so
    the command line refuses exactly what the config refuses."""
    from cagefs.store.config import setting_problem

    def convert(text: str) -> object:
        try:
            value = parse(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
        problem = setting_problem(name, value)
        if problem:
            raise argparse.ArgumentTypeError(f"{text!r} {problem}")
        return value

    return convert


def parse_size(text: str) -> int:
    """Bytes from `65536`, `64K`, `64M`, `1GiB`... (binary units)."""
    match = _SIZE.fullmatch(text.strip())
    if not match:
        raise ValueError(f"not a size: {text!r}")
    number, unit = match.groups()
    return int(number) << (10 * " KMGT".index(unit.upper() or " "))


def parse_count(text: str) -> int:
    """A whole number of at least 1."""
    if not text.strip().isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"not a whole number of at least 1: {text!r}")
    return int(text)


def parse_duration(text: str) -> float:
    """Seconds from `90`, `90s`, `30m`, `2h`, `1d` (more than 0)."""
    match = _DURATION.fullmatch(text.strip())
    if not match or float(match[1]) <= 0:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (e.g. 90s, 30m, 2h)")
    return float(match[1]) * _DURATION_UNITS[match[2].lower()]


# Flag destination → its argparse type; `-o NAME=VALUE` goes through the same one.
CONVERTERS: dict[str, Callable[[str], object]] = {
    "strategy": setting("strategy", str, "a strategy"),
    "memory_threshold": setting("memory_threshold", parse_size, "a size (e.g. 64M)"),
    "cache_mib": setting("chunk_cache_mib", int, "a whole number"),
    "publish_interval": setting("publish_interval", float, "a number"),
    "idle": parse_duration,
    "compact_idle": parse_duration,
    "max_journaled": parse_count,
    "journal_slots_mib": parse_count,
}


def apply_mount_options(args: argparse.Namespace) -> list[str]:
    """Fold `-o` options into `args` (a flag given as a flag wins); the kernel flags left."""
    found = parse_mount_options(args.options, CONVERTERS, args.sloppy)
    for dest in found.flags:
        setattr(args, dest, True)
    for dest, value in found.values.items():
        if dest == "identity":
            args.identity += value
        elif getattr(args, dest, None) is None:
            setattr(args, dest, value)
    return found.kernel


def run(args: argparse.Namespace) -> int:
    from cagefs.cli.daemon import run_in_background, setup_logging
    from cagefs.store import check_store, on_read_only_filesystem
    from cagefs.store.auth import check_accept_untagged

    kernel_flags = apply_mount_options(args)
    read_only, allow_other = args.read_only, args.allow_other
    check_accept_untagged(read_only, args.accept_untagged)
    check_encrypt_only(args, read_only)
    strategy = args.strategy
    env_strategy = check_strategy(STRATEGY_ENV, os.environ.get(STRATEGY_ENV))
    if not os.path.exists("/dev/fuse"):
        raise FuseUnavailableError(
            "/dev/fuse is missing: load the fuse module (or pass the device in)"
        )
    check_store(args.store)
    if not read_only and on_read_only_filesystem(args.store):
        # Served read-write, every edit would fail only when the file is saved, after close.
        read_only = True
        print(f"cagefs mount: {args.store} is on a read-only filesystem: mounting read-only",
              file=sys.stderr)
    # Before anything reads a secret or touches the store: a store in use is refused at once,
    # naming who uses it (also when that is a mount on this same mount point).
    lock = lock_for_mount(args.store, mount_path(args.mountpoint))
    try:
        mountpoint = check_mountpoint(args.mountpoint, args.store)
        store = open_store_from(args, accept_untagged=args.accept_untagged)  # or encrypt-only
        recover_journal(store, writable=not read_only and not args.encrypt_only)
        filesystem = _filesystem()  # loaded only once there is something to serve
        options = filesystem.MountOptions(
            strategy=strategy or env_strategy or store.config.strategy,
            read_only=read_only,
            allow_other=allow_other,
            memory_threshold=_either(args.memory_threshold, store.config.memory_threshold),
            cache_mib=_either(args.cache_mib, store.config.chunk_cache_mib),
            publish_interval=_either(args.publish_interval, store.config.publish_interval),
            accept_untagged=args.accept_untagged,
            fsname=args.fsname or str(store.root.resolve()),
            kernel_flags=tuple(kernel_flags),
            idle=args.idle,
            compact_idle=_either(args.compact_idle, 5.0),
            max_journaled=_either(args.max_journaled, filesystem.MAX_JOURNALED),
            journal_slots_mib=_either(args.journal_slots_mib, 64),
            status_socket=status_socket(mountpoint),
            encrypt_only=args.encrypt_only,
        )
        fallback = setup_logging(
            args.log, args.foreground, args.debug, fallback_log_file(mountpoint)
        )
    except BaseException:
        lock.release()
        raise

    def work(report_ready: Callable[[], None]) -> None:
        serve_until_unmounted(store, lock, mountpoint, options, report_ready)

    if args.foreground:
        with lock:
            work(lambda: None)
        return 0
    # The daemon shares the lock through the fork and keeps it until it exits; this process
    # only exits (unlocking here would unlock the daemon's lock too).
    run_in_background(work)
    if fallback:
        print(f"cagefs mount: no syslog here: the log is in {fallback}", file=sys.stderr)
    return 0


def recover_journal(store: "Store", writable: bool) -> None:
    """Changes a crash left in the change journal are folded into their files (under the
    lock, before the mount is offered); a damaged record refuses the mount, naming it."""
    from cagefs.store.journal import recover_store

    done = recover_store(store, writable)
    if done.links_finished:
        print(
            f"cagefs mount: finished {done.links_finished} publish(es) of hard-linked files "
            "cut by a crash",
            file=sys.stderr,
        )
    for name in done.torn:
        print(
            f"cagefs mount: dropped journal slot {name}: a record write cut by a crash (its "
            "fsync never returned)",
            file=sys.stderr,
        )
    if done.replayed:
        print(
            f"cagefs mount: {len(done.replayed)} file(s) brought up to date from the change "
            "journal left by an unclean stop",
            file=sys.stderr,
        )


def _filesystem() -> types.ModuleType:
    """cagefs.fs.mount, which needs pyfuse3: only the filesystem does (cagefs.age never)."""
    try:
        import cagefs.fs.mount
    except ImportError as exc:
        raise FuseUnavailableError(f"cannot load the filesystem: {exc}") from None
    return cagefs.fs.mount


def check_encrypt_only(args: argparse.Namespace, read_only: bool) -> None:
    """An encrypt-only mount has no secret but the authentication key, and must write."""
    if not args.encrypt_only:
        if args.auth_key_file:
            raise UsageError("--auth-key-file is for --encrypt-only mounts")
        return
    if args.identity or args.passfile:
        raise UsageError("--encrypt-only takes no identity or passphrase (-i, --passfile)")
    if read_only:
        raise UsageError("--encrypt-only with -o ro could do nothing: it cannot read")
    if not args.auth_key_file:
        raise UsageError(
            "--encrypt-only needs the store's authentication key to write files the store "
            "accepts: --auth-key-file FILE (made by `cagefs recipients export-auth-key`)"
        )


def lock_for_mount(root: Path, mountpoint: str) -> "StoreLock":
    """The store's lock. A daemon whose mount is gone (`umount`, `fusermount3 -u`) may still
    be publishing what it was given: wait for it to exit, up to SAVING_PATIENCE seconds. A
    store still mounted anywhere is refused at once."""
    from cagefs.store.lock import StoreBusy, lock_store

    deadline: float | None = None
    while True:
        try:
            return lock_store(root, mountpoint)
        except StoreBusy as busy:
            held_on = busy.mountpoint
            if held_on is None or busy.pid is None or is_mount_point(held_on):
                raise
            if deadline is None:
                deadline = time.monotonic() + SAVING_PATIENCE
                print(
                    f"cagefs mount: waiting for pid {busy.pid} to finish saving {root} "
                    f"(unmounted from {held_on})...",
                    file=sys.stderr,
                )
            left = deadline - time.monotonic()
            if left <= 0:
                raise StoreBusy(root, held_on, busy.pid, saving=True) from None
            with contextlib.suppress(ProcessLookupError):  # else it has just exited
                pidfd = os.pidfd_open(busy.pid)
                try:
                    wait_for_exit(pidfd, min(left, 1.0))
                finally:
                    os.close(pidfd)


def _either(given: T | None, configured: T) -> T:
    return configured if given is None else given


def check_strategy(source: str, value: str | None) -> str | None:
    """A strategy named in the environment, if it is one we know."""
    from cagefs.store.config import setting_problem

    problem = value and setting_problem("strategy", value)
    if problem:
        raise UsageError(f"{source}={value}: {problem}")
    return value or None


def check_mountpoint(path: str, store_root: Path) -> str:
    """The mount point's real path, if it is an empty directory that nothing is mounted on."""
    if is_mount_point(path):
        raise MountPointError(f"{path} is busy: something is already mounted there")
    if not os.path.lexists(path):
        raise MountPointError(f"{path}: mount point does not exist")
    if not os.path.isdir(path):
        raise MountPointError(f"{path}: mount point is not a directory")
    if os.listdir(path):
        raise MountPointError(f"{path}: mount point is not empty")
    real = mount_path(path)
    store = os.path.realpath(store_root)
    if os.path.commonpath([real, store]) == store:
        raise MountPointError(f"{path}: mount point is inside the store {store_root}")
    return real


def serve_until_unmounted(
    store: "Store",
    lock: "StoreLock",
    mountpoint: str,
    options: "MountOptions",
    report_ready: Callable[[], None],
) -> None:
    from cagefs.cli.mounts import forget_daemon, record_daemon
    from cagefs.cli.sdnotify import notify
    from cagefs.fs.mount import SAVING_NOTICE, serve

    def on_saving() -> None:  # systemd: stopping, and give us time beyond TimeoutStopSec=
        extend_usec = int(3 * SAVING_NOTICE * 1_000_000)
        notify(f"STOPPING=1\nEXTEND_TIMEOUT_USEC={extend_usec}\nSTATUS=saving {store.root}")

    def on_ready() -> None:
        record_daemon(mountpoint)
        log.info("serving %s at %s (strategy %s)", store.root, mountpoint, options.strategy)
        notify(f"READY=1\nSTATUS=serving {store.root} at {mountpoint}")
        report_ready()

    try:
        serve(store, lock, mountpoint, options, on_ready, on_saving)
    finally:
        forget_daemon(mountpoint)
