"""The one piece of the systemd notify protocol we need: tell the service manager we are ready.

A datagram to the unix socket named in $NOTIFY_SOCKET; a leading `@` names a socket in the
abstract namespace. Without the variable this does nothing, so it is safe to call always.
"""

import logging
import os
import socket

log = logging.getLogger(__name__)


def notify(message: str) -> bool:
    """Send `message` (e.g. "READY=1"); False if there is no socket or it cannot be reached."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(message.encode())
    except OSError as exc:
        log.warning("could not notify the service manager: %s", exc.strerror or exc)
        return False
    return True
