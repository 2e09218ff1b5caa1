"""fs/handoff: a call runs on one of the hand-off's threads, never on the event loop, and its
result or exception comes back to the task that waits; several calls run at once; and the
threads are started again in a forked child (`cagefs mount` forks after its imports)."""

import os
import threading

import pytest
import trio

from cagefs.fs.handoff import Handoff


def test_a_call_runs_on_a_thread_of_the_handoff_and_returns_its_result() -> None:
    handoff = Handoff("test-handoff", 2)

    async def main() -> tuple[str, int]:
        def where(a: int, b: int) -> tuple[str, int]:
            return threading.current_thread().name, a + b

        return await handoff.run(where, 2, 3)

    name, total = trio.run(main)
    assert name.startswith("test-handoff_")
    assert total == 5


def test_an_exception_is_raised_in_the_waiting_task() -> None:
    handoff = Handoff("test-handoff", 1)

    def fails() -> None:
        raise OSError(28, "No space left on device")

    async def main() -> None:
        await handoff.run(fails)

    with pytest.raises(OSError, match="No space left"):
        trio.run(main)


def test_calls_run_at_once_up_to_the_thread_count() -> None:
    """Two calls that each wait for the other finish only if both run at the same time."""
    handoff = Handoff("test-handoff", 2)
    both = threading.Barrier(2)

    async def main() -> list[int]:
        results: list[int] = []

        async def one(value: int) -> None:
            results.append(await handoff.run(lambda: both.wait() * 0 + value))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(one, 1)
            nursery.start_soon(one, 2)
        return sorted(results)

    assert trio.run(main) == [1, 2]


def test_a_forked_child_gets_threads_of_its_own() -> None:
    handoff = Handoff("test-handoff", 1)

    async def main() -> int:
        return await handoff.run(os.getpid)

    assert trio.run(main) == os.getpid()  # the parent's threads are started
    pid = os.fork()
    if pid == 0:  # the child: its hand-off must not wait for the parent's threads
        os._exit(0 if trio.run(main) == os.getpid() else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
