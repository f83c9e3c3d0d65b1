"""A fixed set of daemon worker threads, kept for the life of the process.

concurrent.futures.ThreadPoolExecutor would do, but for two things: its threads are
joined at interpreter exit (a worker stuck on a backend then keeps the process from
stopping at SIGTERM), and making one per scrape starts and ends threads at every scrape.
Here threads start as work needs them, up to `size`, and never end: from the first few
scrapes on the thread count stays constant, and exit never waits for them.
"""

from __future__ import annotations

import queue
import threading
from concurrent.futures import Future


class Workers:
    def __init__(self, size: int, name: str):
        self.size = max(1, size)
        self.name = name
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._idle = threading.Semaphore(0)
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    def submit(self, function, *args, **kwargs) -> Future:
        future: Future = Future()
        self._queue.put((future, function, args, kwargs))
        if not self._idle.acquire(blocking=False):
            with self._lock:
                if len(self._threads) < self.size:
                    thread = threading.Thread(target=self._run, name=f"{self.name}-{len(self._threads)}", daemon=True)
                    self._threads.append(thread)
                    thread.start()
        return future

    @property
    def threads(self) -> int:
        return len(self._threads)

    def _run(self) -> None:
        while True:
            future, function, args, kwargs = self._queue.get()
            if future.set_running_or_notify_cancel():
                try:
                    result = function(*args, **kwargs)
                except BaseException as exc:  # handed to the waiting side, as concurrent.futures does
                    future.set_exception(exc)
                else:
                    future.set_result(result)
            del future, function, args, kwargs
            self._idle.release()
