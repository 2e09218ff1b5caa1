"""`cagefs umount MOUNTPOINT`: unmount, then wait until the daemon has published and exited.

Returning as soon as the kernel drops the mount would let a caller (systemd's ExecStop, a
shutdown script) kill the daemon while it still publishes the last closed files.
"""

import argparse
import os
import select
import subprocess
import sys

from cagefs.cli.mounts import daemon_pidfd, is_mount_point
from cagefs.errors import CageError

_PATIENCE_MS = 2000


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("umount", help="unmount, publishing pending writes first")
    parser.add_argument("mountpoint", metavar="MOUNTPOINT")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if not is_mount_point(args.mountpoint):
        raise CageError(f"{args.mountpoint} is not mounted")
    pidfd = daemon_pidfd(args.mountpoint)
    try:
        unmount(args.mountpoint)
        if pidfd is not None:
            wait_for_exit(pidfd)
    finally:
        if pidfd is not None:
            os.close(pidfd)
    return 0


def unmount(mountpoint: str) -> None:
    result = subprocess.run(
        ["fusermount3", "-u", mountpoint], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        reason = result.stderr.strip().splitlines()[-1] if result.stderr.strip() else "failed"
        raise CageError(f"cannot unmount {mountpoint}: {reason.removeprefix('fusermount3: ')}")


def wait_for_exit(pidfd: int) -> None:
    """Block until the daemon exits (its pidfd becomes readable); say why if it takes a while."""
    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    if not poller.poll(_PATIENCE_MS):
        print("cagefs umount: waiting for pending writes to be published...", file=sys.stderr)
        poller.poll()
