"""What the mount is doing, counted by the handler wrapper (`fs/errors.fuse_errors`): requests
seen and in flight, handles open. `--idle` unmounts on it; `cagefs status` reports it."""

import time
from dataclasses import dataclass, field

_OPENS = frozenset({"open", "create", "opendir"})
_RELEASES = frozenset({"release", "releasedir"})
# Requests that may change a directory of the store (setattr: a directory's own attributes).
_NAMESPACE = frozenset(
    {"create", "mknod", "mkdir", "symlink", "link", "unlink", "rmdir", "rename", "setattr"}
)


@dataclass
class Activity:
    started: float = field(default_factory=time.monotonic)
    last_request: float = field(default_factory=time.monotonic)
    requests: int = 0
    in_flight: int = 0
    open_handles: int = 0
    # Bumped when a request that may change a directory begins and when it ends, and by each
    # publish's rename: a directory fsync'ed at one value is durable while it stays.
    namespace_changes: int = 0

    def begin(self, handler: str) -> None:
        if handler in _NAMESPACE:
            self.namespace_changes += 1
        self.requests += 1
        self.in_flight += 1
        self.last_request = time.monotonic()

    def end(self, handler: str, succeeded: bool) -> None:
        if handler in _NAMESPACE:
            self.namespace_changes += 1
        self.in_flight -= 1
        self.last_request = time.monotonic()
        if handler in _OPENS and succeeded:
            self.open_handles += 1
        elif handler in _RELEASES:
            self.open_handles -= 1

    def idle_for(self) -> float:
        """Seconds with no handle open and no request, or 0 while something is going on."""
        if self.open_handles or self.in_flight:
            return 0.0
        return time.monotonic() - self.last_request


# One mount per process: the handlers are decorated at import time, so the counter is global.
ACTIVITY = Activity()
