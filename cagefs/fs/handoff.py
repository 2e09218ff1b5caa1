"""A cheaper thread hop for the fsync path: a call handed to a few long-lived threads through a
queue, its outcome handed back to the waiting task with one `run_sync_soon`.

A journal record (fs/content.py) is written and fdatasync'ed off the event loop, once per
fsync. `trio.to_thread.run_sync` costs 150-230 µs of CPU per call on this host (a capacity
limiter, its thread cache's handshake, a context copy, cancel-scope bookkeeping); this costs
90-140 µs (measured side by side, 3,000 empty calls, load 6). The threads start on first use,
and again in a forked child (`cagefs mount` forks after its imports: threads do not survive).
"""

import contextlib
import functools
import os
import queue
import threading
from collections.abc import Callable
from typing import TypeVar

import outcome
import trio

T = TypeVar("T")
_Job = tuple[Callable[[], object], trio.lowlevel.TrioToken, trio.lowlevel.Task]


def _not_abortable(_: object) -> trio.lowlevel.Abort:
    return trio.lowlevel.Abort.FAILED  # as trio.to_thread.run_sync: the call runs to its end


class Handoff:
    """`await run(fn, *args)`: fn(*args) on one of `threads` threads (calls beyond that wait
    their turn), its result or exception back in the calling task; not cancellable once made."""

    def __init__(self, name: str, threads: int) -> None:
        self._name = name
        self._threads = threads
        self._jobs: queue.SimpleQueue[_Job]  # made by `_start`, in each process that runs
        self._pid = 0
        self._lock = threading.Lock()

    async def run(self, fn: Callable[..., T], *args: object) -> T:
        if self._pid != os.getpid():
            self._start()
        await trio.lowlevel.checkpoint_if_cancelled()
        call = functools.partial(fn, *args) if args else fn
        token, task = trio.lowlevel.current_trio_token(), trio.lowlevel.current_task()
        self._jobs.put((call, token, task))
        return await trio.lowlevel.wait_task_rescheduled(_not_abortable)  # type: ignore[no-any-return]

    def _start(self) -> None:
        with self._lock:
            if self._pid == os.getpid():
                return
            self._jobs = queue.SimpleQueue()
            for number in range(self._threads):
                name = f"{self._name}_{number}"
                worker = threading.Thread(target=self._work, args=(self._jobs,), name=name)
                worker.daemon = True
                worker.start()
            self._pid = os.getpid()

    @staticmethod
    def _work(jobs: "queue.SimpleQueue[_Job]") -> None:
        while True:
            call, token, task = jobs.get()
            result = outcome.capture(call)
            del call
            with contextlib.suppress(trio.RunFinishedError):  # (the run ended: nobody waits)
                token.run_sync_soon(trio.lowlevel.reschedule, task, result)
