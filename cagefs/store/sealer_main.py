"""The sealer process (see `cagefs.store.sealer`): `python -m cagefs.store.sealer_main SOCK RING`.

It runs jobs one after another until the daemon closes the socket. It never reports plaintext
or keys: a failure is sent back as an errno and a line of text, then the process exits.
"""

import contextlib
import errno
import mmap
import os
import socket
import sys
import traceback

from cagefs.age import PayloadState, PayloadWriter
from cagefs.store.direct import DirectAppender, new_buffers
from cagefs.store.sealer import (
    ACK,
    DATA,
    DONE,
    END,
    FAIL,
    JOB,
    MESSAGE_MAX,
    READY,
    SLOT_SIZE,
    TRIM,
    give_back_pages,
)


def main(argv: list[str]) -> int:
    sock = socket.socket(fileno=int(argv[0]))
    ring_fd = int(argv[1])
    ring = memoryview(mmap.mmap(ring_fd, 0, prot=mmap.PROT_READ))
    buffers = new_buffers()
    try:
        sock.send(READY)
        while _run_job(sock, ring, buffers):
            pass
    except OSError as exc:
        _fail(sock, exc.errno or errno.EIO, exc.strerror or str(exc))
        return 1
    except BaseException:
        _fail(sock, errno.EIO, "sealer crashed: " + traceback.format_exc())
        return 1
    return 0


def _run_job(sock: socket.socket, ring: memoryview, buffers: list[memoryview]) -> bool:
    """Seal one payload; False once the daemon has gone (end-of-file, never an error)."""
    message, fds, _, _ = socket.recv_fds(sock, MESSAGE_MAX, 1)
    if not message:
        return False
    if message == TRIM:  # idle: the ring's pages are gone already, now the buffers'
        for buffer in buffers:
            give_back_pages(buffer.obj)  # type: ignore[arg-type]
        return True
    _, payload_key, next_chunk, written = JOB.unpack(message)
    fd = fds[0]
    sink = DirectAppender(fd, os.lseek(fd, 0, os.SEEK_CUR), buffers)
    try:
        writer = PayloadWriter.resume(sink, PayloadState(payload_key, next_chunk, b"", written))
        while True:
            message = sock.recv(MESSAGE_MAX)
            if not message:  # the daemon died: leave the temp incomplete, it is never published
                return False
            if message == END:
                writer.close()
                sink.close()
                sock.send(DONE.pack(b"K", writer.plaintext_written))
                return True
            _, slot, size = DATA.unpack(message)
            writer.write(ring[slot * SLOT_SIZE : slot * SLOT_SIZE + size])
            sock.send(ACK.pack(b"A", slot))
    finally:
        sink.abandon()
        os.close(fd)


def _fail(sock: socket.socket, code: int, text: str) -> None:
    with contextlib.suppress(OSError):  # the daemon is gone: nobody to tell
        sock.send(FAIL.pack(b"F", code) + text.encode()[: MESSAGE_MAX - FAIL.size])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
