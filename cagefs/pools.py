"""Thread pools started on first use, and started again in a forked child.

`cagefs mount` forks into the background after its imports, and threads do not survive a fork:
a pool made before it would hand work to threads that no longer exist.
"""

import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor


class LazyPool:
    """Call it for the pool; `workers()` is asked when the pool is made."""

    def __init__(self, name: str, workers: Callable[[], int]) -> None:
        self._name = name
        self._workers = workers
        self._pool: ThreadPoolExecutor | None = None
        self._pid = 0
        self._lock = threading.Lock()

    def __call__(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._pool is None or self._pid != os.getpid():
                self._pool = ThreadPoolExecutor(self._workers(), thread_name_prefix=self._name)
                self._pid = os.getpid()
            return self._pool
