"""`cagefs umount MOUNTPOINT`: unmount, then wait until the daemon has published and exited.

Returning as soon as the kernel drops the mount would let a caller (systemd's ExecStop, a
shutdown script) kill the daemon while it still publishes the last closed files.
"""

import argparse
import os
import subprocess
import sys

from cagefs.cli.mounts import daemon_pidfd, is_mount_point, wait_for_exit
from cagefs.errors import CageError, MountPointError

_PATIENCE = 2.0  # seconds before saying why umount has not returned yet


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("umount", help="unmount, publishing pending writes first")
    parser.add_argument("mountpoint", metavar="MOUNTPOINT")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if not is_mount_point(args.mountpoint):
        raise MountPointError(f"{args.mountpoint} is not mounted")
    pidfd = daemon_pidfd(args.mountpoint)
    try:
        unmount(args.mountpoint)
        if pidfd is not None and not wait_for_exit(pidfd, _PATIENCE):
            print("cagefs umount: waiting for pending writes to be published...", file=sys.stderr)
            wait_for_exit(pidfd, None)
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
