"""Every handler's errors become an errno: the daemon must survive anything one request does.

pyfuse3 stops the whole daemon on any exception other than FUSEError, so each handler is
wrapped: OSError keeps its errno, authentication failures become EIO with a log line naming the
file (I6), and anything unexpected is logged with its traceback and answered with EIO.
"""

import contextlib
import errno
import functools
import logging
from collections.abc import Awaitable, Callable, Iterator
from typing import ParamSpec, TypeVar

import pyfuse3

from cagefs.age import AgeError
from cagefs.fs.activity import ACTIVITY

log = logging.getLogger("cagefs")
# Errors worth a line in the log, not just an errno for the caller.
LOGGED_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EIO)
P = ParamSpec("P")
T = TypeVar("T")


def fuse_errors(handler: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]:
    name = handler.__name__
    shows_bytes = name in _NAMING_HANDLERS

    @functools.wraps(handler)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        if log.isEnabledFor(logging.DEBUG):  # --debug: every request, never its data
            log.debug("%s(%s)", name, ", ".join(_shown_argument(a, shows_bytes) for a in args[1:]))
        ACTIVITY.begin(name)
        succeeded = False
        try:
            result = await handler(*args, **kwargs)
            succeeded = True
            return result
        except pyfuse3.FUSEError as exc:
            log.debug("%s: %s", name, errno.errorcode.get(exc.errno, exc.errno))
            raise
        except OSError as exc:
            if exc.errno in LOGGED_ERRNOS:
                log.error("%s: %s", handler.__name__, exc.strerror)
            raise pyfuse3.FUSEError(exc.errno or errno.EIO) from None
        except AgeError as exc:
            log.error("%s: %s", handler.__name__, exc)
            raise pyfuse3.FUSEError(errno.EIO) from None
        except Exception:
            log.exception("internal error in %s", handler.__name__)
            raise pyfuse3.FUSEError(errno.EIO) from None
        finally:
            ACTIVITY.end(name, succeeded)

    return wrapper


# Handlers whose bytes arguments are names or symlink targets, which the store shows anyway;
# any other bytes (written data, xattr values) are logged by their length only.
_NAMING_HANDLERS = frozenset(
    {"lookup", "mkdir", "rmdir", "create", "mknod", "unlink", "rename", "symlink", "link"}
)


def _shown_argument(value: object, shows_bytes: bool) -> str:
    if isinstance(value, bytes | bytearray | memoryview):
        return repr(bytes(value)) if shows_bytes else f"<{len(value)} bytes>"
    if isinstance(value, int | float | str | type(None)):
        return repr(value)
    if isinstance(value, list | tuple):
        return f"<{len(value)} items>"
    return type(value).__name__


def shown(path: str | None) -> str:
    """How the log names a file: its plaintext path, or what it is once unlinked."""
    return path or "(unlinked file)"


class NamedFileError(AgeError):
    """An age failure tagged with the plaintext path it happened on, for the log."""

    def __init__(self, path: str | None, exc: AgeError) -> None:
        super().__init__(f"{shown(path)}: {exc}")


@contextlib.contextmanager
def about(path: str | None) -> Iterator[None]:
    """Errors raised inside name the file they happened to, so that the log line does (I6):
    an AgeError becomes a NamedFileError, a logged OSError (a full disk) gets the path before
    its text. The errno stays what it was."""
    try:
        yield
    except AgeError as exc:
        raise NamedFileError(path, exc) from None
    except OSError as exc:
        if exc.errno not in LOGGED_ERRNOS:
            raise
        raise OSError(exc.errno, f"{shown(path)}: {exc.strerror or exc}") from None
