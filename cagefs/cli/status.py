"""`cagefs status [MOUNTPOINT] [--json]`: what each running mount is doing, asked of its daemon
over its status socket (fs/status.py), never guessed from /proc."""

import argparse
import json
import socket
import sys

from cagefs.cli.mounts import cagefs_mounts, is_mount_point, status_socket
from cagefs.errors import MountPointError

_TIMEOUT = 10.0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("status", help="show what running mounts are doing")
    parser.add_argument(
        "mountpoint", metavar="MOUNTPOINT", nargs="?", help="one mount (default: every mount)"
    )
    parser.add_argument("--json", action="store_true", help="print JSON, one list")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if args.mountpoint:
        if not is_mount_point(args.mountpoint):
            raise MountPointError(f"{args.mountpoint} is not mounted")
        mountpoints = [args.mountpoint]
    else:
        mountpoints = cagefs_mounts()
    reports = [ask(mountpoint) for mountpoint in mountpoints]
    if args.json:
        json.dump(reports, sys.stdout, indent=2)
        print()
    else:
        for report in reports:
            print(describe(report))
    return 0 if all("error" not in report for report in reports) else 1


def ask(mountpoint: str) -> dict[str, object]:
    """The daemon's report, or {"mountpoint", "error"} if it cannot be had."""
    path = status_socket(mountpoint)
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC) as sock:
            sock.settimeout(_TIMEOUT)
            sock.connect(str(path))
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        return json.loads(data)
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        return {"mountpoint": mountpoint, "error": f"no answer from its daemon ({reason})"}


def describe(report: dict) -> str:
    if "error" in report:
        return f"{report['mountpoint']}: {report['error']}"
    journal = report.get("journal", {})  # a daemon from before the journal has none
    lines = [
        f"{report['mountpoint']}: {report['store']}, pid {report['pid']}, "
        f"strategy {report['strategy']}, up {report['uptime_s']:.0f} s",
        f"  requests {report['requests']} ({report['requests_in_flight']} in flight), "
        f"{report['open_handles']} open handle(s)",
        f"  unpublished: {report['unpublished']['files']} file(s), "
        f"{report['unpublished']['bytes']} bytes",
        f"  journal: {journal.get('records', 0)} record(s) of {journal.get('files', 0)} "
        f"file(s), {journal.get('bytes', 0)} bytes, not yet folded into the files",
        f"  cache {report['cache']['bytes']} of {report['cache']['limit']} bytes; "
        f"sealers {report['sealers']['running']} ({report['sealers']['idle']} idle)",
    ]
    lines += [
        f"  {f['state']:9} {f['size']:>12}  {f['path'] or '(unlinked)'}{_records(f)}"
        for f in report["files"]
    ]
    lines += [f"  error at {e['time']}: {e['message']}" for e in report["last_errors"]]
    return "\n".join(lines)


def _records(entry: dict) -> str:
    records = entry.get("records", 0)
    return f" ({records} journal record(s))" if records else ""
