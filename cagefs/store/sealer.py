"""Sealing a new version's payload in a helper process, so that encryption has a GIL of its own.

Why a process: in the daemon, one thread receives FUSE requests and holds the GIL while pyfuse3
copies each 1 MiB write, and the threads that seal chunks need the GIL again after every 64 KiB
chunk. Measured on a 1 GiB `dd`: each chunk then took ~140 µs instead of 27 µs, the machine sat
a third idle, and the stream strategy wrote ~500 MB/s. A sealer process seals and writes with
nobody else's GIL in the way (650-720 MB/s in the same sitting).

How: each sealer owns a ring of `RING_SLOTS` slots of `SLOT_SIZE` bytes in a memfd (RAM only:
plaintext never touches a disk, I1). The daemon copies plaintext into a free slot of its
mapping of the ring and names the slot in a message on a SOCK_SEQPACKET socket; the sealer
seals it straight from its own mapping and acknowledges the slot. (A plain copy holds the GIL
for ~0.1 ms a MiB, but `pwritev` into the memfd, which does not, cost 5 % more CPU in all:
the kernel looks up and locks every page of the slot.) A job starts from a
`PayloadState` handed over by the daemon's own writer, so the header, the file key and the
first bytes are still written in the daemon; the sealer only ever sees the payload key.

The sealer appends to the version's temp file through its own copy of the descriptor. If the
daemon dies, the sealer reads end-of-file on its socket and exits without finishing the
payload, so the temp is left incomplete and unpublished: the next mount removes it (I3).

Messages, daemon to sealer: JOB (payload key, next chunk, bytes written; the temp file's fd
rides along), DATA (slot, length), END, and between jobs TRIM. Sealer to daemon: READY (once,
when started), ACK (slot), DONE (plaintext size), FAIL (errno, text). After a FAIL the sealer
exits; after DONE it waits for the next JOB.

An idle sealer's memory is given back (`SealerPool.trim_idle`, each publisher round): a ring
and the sealer's output buffers, once written through, stay resident (16 + 9 MiB) though no
job needs them, and under fio that idle memory beside a full chunk cache put the daemon over
its 150 MiB. The daemon removes the ring's pages (`MADV_REMOVE`: both mappings lose them) and
sends TRIM, on which the sealer removes its buffers' pages; the next job faults them in again.
"""

import contextlib
import errno
import logging
import mmap
import os
import socket
import struct
import subprocess
import sys
import threading
from collections.abc import Sequence

from cagefs.age import Buffer, PayloadState

log = logging.getLogger("cagefs")

SLOT_SIZE = 1024 * 1024
RING_SLOTS = 16
RING_SIZE = RING_SLOTS * SLOT_SIZE  # the most plaintext a stream has in flight (I7)
MAX_SEALERS = 4  # beyond this many files streaming at once, a stream seals on its own
_MAX_IDLE = 1
_STOP_TIMEOUT = 5.0
_START_TIMEOUT = 30.0

JOB = struct.Struct("<c32sQQ")
DATA = struct.Struct("<cII")
END = b"E"
TRIM = b"T"
READY = b"R"
ACK = struct.Struct("<cI")
DONE = struct.Struct("<cQ")
FAIL = struct.Struct("<cI")  # followed by the error's text
MESSAGE_MAX = 64 * 1024


class SealerError(OSError):
    """The sealer process failed (a full disk, a crash); carries the errno to report."""


class Sealer:
    """One sealer process and its ring; it runs one job at a time."""

    def __init__(self) -> None:
        self.ring = os.memfd_create("cagefs-ring")
        try:
            os.ftruncate(self.ring, RING_SIZE)
            self.slots = memoryview(mmap.mmap(self.ring, RING_SIZE))
        except BaseException:
            os.close(self.ring)
            raise
        self.used = False  # ring pages written since the last `trim`
        self.sock, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            # -P: never import from the daemon's working directory.
            command = [sys.executable, "-P", "-m", "cagefs.store.sealer_main"]
            self.process = subprocess.Popen(
                [*command, str(theirs.fileno()), str(self.ring)],
                pass_fds=(theirs.fileno(), self.ring),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
            )
        except BaseException:
            self.sock.close()
            self._unmap()
            raise
        finally:
            theirs.close()
        self._wait_ready()

    def _wait_ready(self) -> None:
        """A sealer that cannot start (say it cannot import cagefs) fails here, where the pool
        can still fall back to threads, and not in the middle of a file."""
        self.sock.settimeout(_START_TIMEOUT)
        try:
            ready = self.sock.recv(MESSAGE_MAX) == READY
        except OSError:
            ready = False
        self.sock.settimeout(None)
        if not ready:
            self.stop()
            raise SealerError(errno.EIO, "the sealer process did not start")

    def trim(self) -> None:
        """Give back the memory an idle sealer holds: its ring's pages, then (TRIM) those of
        its output buffers. Only between jobs: no slot is in flight."""
        give_back_pages(self.slots.obj)
        with contextlib.suppress(OSError):  # a sealer that died: its next job reports it
            self.sock.send(TRIM)
        self.used = False

    def stop(self) -> None:
        """Close the socket (the sealer exits on end-of-file) and reap the process."""
        self.sock.close()
        try:
            self.process.wait(_STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._unmap()

    def _unmap(self) -> None:
        ring = self.slots.obj
        self.slots.release()
        # A view of a slot may outlive the job (`SealJob.lend`'s, in the frames of the
        # traceback that retired the sealer): the mapping then goes with the last such view.
        with contextlib.suppress(BufferError):
            ring.close()
        os.close(self.ring)


class SealJob:
    """The rest of one payload, sealed by a sealer process into the temp file `fd`.

    Plaintext is copied into the open slot of the ring; a full slot goes to the sealer at
    once, a partly filled one when `send` is called (close(2), sealing). Nothing keeps a
    reference to the caller's buffer, which may be borrowed (pyfuse3's own receive buffer).
    """

    def __init__(self, sealer: Sealer, fd: int, state: PayloadState) -> None:
        self.sealer = sealer
        sealer.used = True
        self._free = list(range(RING_SLOTS))
        self._slot: int | None = None  # the slot being filled
        self._fill = 0
        written_before = state.written - len(state.pending)
        start = JOB.pack(b"J", state.payload_key, state.next_chunk, written_before)
        self._send(start, fds=[fd])
        self.write(state.pending)

    def fileno(self) -> int:
        """Readable when the sealer has something to say (an ACK, a failure, its exit)."""
        return self.sealer.sock.fileno()

    def room(self) -> int:
        """How many bytes `write` takes without waiting for the sealer."""
        left_in_slot = SLOT_SIZE - self._fill if self._slot is not None else 0
        return len(self._free) * SLOT_SIZE + left_in_slot

    def drained(self) -> bool:
        """Whether the sealer has taken in everything passed on (every slot acknowledged)."""
        return self._slot is None and len(self._free) == RING_SLOTS

    def write(self, data: Buffer) -> None:
        """Pass plaintext on, in order; waits (without the GIL) only for more than `room()`."""
        view = memoryview(data).cast("B")
        while view:
            if self._slot is None:
                self._slot, self._fill = self._free_slot(), 0
            take = min(SLOT_SIZE - self._fill, len(view))
            at = self._slot * SLOT_SIZE + self._fill
            self.sealer.slots[at : at + take] = view[:take]
            self._fill += take
            view = view[take:]
            if self._fill == SLOT_SIZE:
                self.send()

    def lend(self) -> memoryview:
        """A free slot to fill in place, which saves the copy `write` makes; `commit` then
        says how much of it was filled, before any other call."""
        self.send()  # a slot being filled goes first: slots are sealed in the order sent
        self._slot, self._fill = self._free_slot(), 0
        at = self._slot * SLOT_SIZE
        return self.sealer.slots[at : at + SLOT_SIZE]

    def commit(self, size: int) -> None:
        """The first `size` bytes of the lent slot are plaintext: hand them to the sealer."""
        self._fill = size
        self.send()

    def send(self) -> None:
        """Hand the slot being filled to the sealer, full or not."""
        if self._slot is not None and self._fill:
            self._send(DATA.pack(b"D", self._slot, self._fill))
            self._slot = None

    def collect(self) -> None:
        """Take in what the sealer has said so far, without waiting: freed slots, or its
        failure (raised)."""
        while True:
            try:
                self._receive(socket.MSG_DONTWAIT)
            except BlockingIOError:
                return

    def finish(self) -> int:
        """Seal the final chunk; returns the payload's plaintext size once it is all written."""
        self.send()
        self._send(END)
        while True:
            message = self._receive()
            if message[:1] == b"K":
                return DONE.unpack(message)[1]

    def _free_slot(self) -> int:
        while not self._free:
            self._receive()
        return self._free.pop()

    def _receive(self, flags: int = 0) -> bytes:
        """The next message; ACKs free their slot, a FAIL or a dead sealer raises."""
        try:
            message = self._recv(flags)
        except ConnectionResetError:
            # A sealer that exits with our messages unread (it failed) makes the kernel report
            # ECONNRESET once, before the messages it sent, its FAIL among them: read on.
            message = self._recv(flags, after_reset=True)
        kind = message[:1]
        if kind == b"A":
            self._free.append(ACK.unpack(message)[1])
        elif kind == b"F":
            code, text = FAIL.unpack_from(message)[1], message[FAIL.size :].decode()
            raise SealerError(code, text)
        elif not message:
            raise SealerError(errno.EIO, "sealer process exited")
        return message

    def _recv(self, flags: int, after_reset: bool = False) -> bytes:
        try:
            return self.sealer.sock.recv(MESSAGE_MAX, flags)
        except BlockingIOError:
            raise
        except ConnectionResetError:
            if after_reset:
                raise SealerError(errno.EIO, "sealer process lost") from None
            raise
        except OSError as exc:
            raise SealerError(errno.EIO, f"sealer process lost ({exc.strerror})") from None

    def _send(self, message: bytes, fds: Sequence[int] = ()) -> None:
        try:
            socket.send_fds(self.sealer.sock, [message], list(fds))
        except OSError as exc:
            # A sealer that failed (a full disk) reports why and exits: that report, still
            # queued on the socket, is the error to raise, not the broken pipe it left.
            self.collect()
            raise SealerError(errno.EIO, f"sealer process lost ({exc.strerror})") from None


class SealerPool:
    """Sealer processes for the whole mount: reused job after job, at most `MAX_SEALERS`.

    `take` returns None when no sealer can be had (the limit is reached, or starting one
    failed); the caller then seals on its own thread, slower but just as correct.
    """

    def __init__(self, limit: int = MAX_SEALERS, keep_idle: int = _MAX_IDLE) -> None:
        self._limit = limit
        self._keep_idle = keep_idle
        self._lock = threading.Lock()
        self._idle: list[Sealer] = []
        self._count = 0
        self._closed = False
        self._warned = False

    @property
    def running(self) -> tuple[int, int]:
        """(sealer processes running, of which idle)."""
        with self._lock:
            return self._count, len(self._idle)

    def take(self) -> Sealer | None:
        with self._lock:
            if self._closed or (not self._idle and self._count >= self._limit):
                return None
            if self._idle:
                return self._idle.pop()
            self._count += 1
        try:
            return Sealer()
        except OSError as exc:
            with self._lock:
                self._count -= 1
                warn, self._warned = not self._warned, True
            if warn:
                log.warning("cannot start a sealer process (%s): sealing in threads", exc)
            return None

    def trim_idle(self) -> None:
        """Give back the memory of the idle sealers that worked since the last call."""
        with self._lock:
            for sealer in self._idle:
                if sealer.used:
                    sealer.trim()

    def warm(self) -> None:
        """Start one sealer ahead of need, so that the first large file does not wait for it."""
        sealer = self.take()
        if sealer is not None:
            self.give_back(sealer)

    def give_back(self, sealer: Sealer) -> None:
        """A sealer whose job ended with DONE: keep it for the next job, or stop it."""
        with self._lock:
            if not self._closed and len(self._idle) < self._keep_idle:
                self._idle.append(sealer)
                return
        self.retire(sealer)

    def retire(self, sealer: Sealer) -> None:
        """Stop a sealer that failed or whose job was abandoned."""
        sealer.stop()
        with self._lock:
            self._count -= 1

    def close(self) -> None:
        """Stop the idle sealers; busy ones are retired by their jobs' owners."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for sealer in idle:
            self.retire(sealer)


def give_back_pages(shared: mmap.mmap) -> None:
    """Free the pages of a shared mapping (a memfd's or an anonymous one): they read as zeros
    after, and cost nothing until written again."""
    with contextlib.suppress(OSError):  # a kernel or filesystem without it: they stay
        shared.madvise(mmap.MADV_REMOVE)
