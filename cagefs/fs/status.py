"""`cagefs status`: the daemon answers on a unix socket in the runtime directory (root's
/run/cagefs, mode 0700; the socket 0600) with one JSON document, then closes. Only what the
daemon knows is reported: nothing is guessed from /proc.

Each open or unsaved file is listed by its plaintext path (names are not secret in a store:
its backing files carry them) and its state: `streaming` (written in order into a sealer),
`staged` (changed blocks in RAM or scratch), `pending` (sealed, waiting for its publish) or
`clean`, with how many change-journal records it has not yet folded into its backing file
(store/journal.py); `journal` sums them. No file content is ever included.
"""

import collections
import contextlib
import json
import logging
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import trio

from cagefs.fs.activity import ACTIVITY

if TYPE_CHECKING:
    from cagefs.fs.content import FileContent
    from cagefs.fs.env import Env
    from cagefs.fs.inodes import InodeTable

log = logging.getLogger("cagefs")
LAST_ERRORS = 10


class RecentErrors(logging.Handler):
    """The last LAST_ERRORS error lines, for the status (the log keeps them all)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.lines: collections.deque[tuple[float, str]] = collections.deque(maxlen=LAST_ERRORS)

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append((record.created, record.getMessage().splitlines()[0]))


def snapshot(
    env: "Env", table: "InodeTable", mountpoint: str, strategy: str, errors: RecentErrors
) -> dict[str, object]:
    files = []
    unpublished_bytes = 0
    for node in list(table.nodes.values()):
        content = node.content
        if content is None:
            continue
        state = _state(content)
        if state != "clean" or content.handles or content.records:
            files.append(
                {
                    "path": node.path,
                    "state": state,
                    "size": content.size,
                    "handles": content.handles,
                    "records": content.records,
                }
            )
        if state != "clean":
            unpublished_bytes += content.size
    running, idle = env.sealers.running
    return {
        "store": str(env.root),
        "mountpoint": mountpoint,
        "pid": os.getpid(),
        "strategy": strategy,
        "uptime_s": round(time.monotonic() - ACTIVITY.started, 1),
        "requests": ACTIVITY.requests,
        "requests_in_flight": ACTIVITY.in_flight,
        "open_handles": ACTIVITY.open_handles,
        "files": files,
        "unpublished": {"files": len(env.publish_queue), "bytes": unpublished_bytes},
        "journal": {
            "files": len(env.journaled),
            "records": sum(content.records for content in env.journaled),
            "bytes": sum(content.recorded_bytes for content in env.journaled),
        },
        "cache": {"bytes": env.cache.used_bytes, "limit": env.cache.limit_bytes},
        "sealers": {"running": running, "idle": idle},
        "last_errors": [
            {"time": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(at)), "message": text}
            for at, text in errors.lines
        ],
    }


def _state(content: "FileContent") -> str:
    if content.stream is not None:
        return "streaming"
    if content.overlay is not None:
        return "staged"
    if content.pending is not None:
        return "pending"
    return "clean"


async def _send_all(client: trio.socket.SocketType, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[await client.send(view) :]


async def serve_status(path: Path, describe: Callable[[], dict[str, object]]) -> None:
    """Answer every connection on `path` with `describe()` as JSON, until cancelled."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()  # left by a daemon that was killed
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o177)
    try:
        await sock.bind(str(path))
    finally:
        os.umask(old_umask)
    sock.listen()
    try:
        while True:
            client, _ = await sock.accept()
            with client:
                try:
                    await _send_all(client, json.dumps(describe()).encode() + b"\n")
                except OSError as exc:  # the client went away: its problem, not ours
                    log.debug("status client: %s", exc.strerror)
                except Exception:  # a report must never stop the filesystem
                    log.exception("cannot answer a status request")
    finally:
        sock.close()
        with contextlib.suppress(FileNotFoundError):
            path.unlink()

