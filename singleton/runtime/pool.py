"""The bounded pool of pre-started threads that runs sync jobs.

A thread started per run costs ~0.5 ms between the ticker's wake-up and the job's first line; a thread already
waiting on a queue costs a wake-up (~0.3 ms), so a run is handed over at its claim instead and its worker waits for
the instant itself (runtime.arming). The pool never grows and never queues: a run offered while every worker is
busy is refused, and the ticker skips and counts that slot (`pool_full`). A sync job cannot be killed, so a hung
one keeps its worker until it returns (the hung-job rules end the term meanwhile).
"""
from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable

from singleton.core.errors import SingletonError

log = logging.getLogger("singleton")

Work = Callable[[], None]


class PoolFull(SingletonError):
    """Every worker is busy: the run was not started."""


class WorkerPool:
    def __init__(self, size: int, name: str = "singleton-worker", demand: int | None = None) -> None:
        """`demand`: how many sync runs may go at once (the jobs' max_instances summed), when known."""
        self.size = size
        # A run armed at its claim (runtime.arming) holds its worker ~0.25 s before its instant: only when there is a
        # worker for every run that may go at once, so holding one early never leaves another run without one.
        self.may_hold_early = demand is None or size >= demand
        self._name = name
        self._queue: queue.SimpleQueue[Work | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._idle = 0
        self._threads: list[threading.Thread] = []
        self._closed = False

    def start(self) -> WorkerPool:
        """Start the workers now (before the first run needs one); idempotent."""
        with self._lock:
            missing = self.size - len(self._threads)
            if self._closed or missing <= 0:
                return self
            self._idle += missing
            for _ in range(missing):
                thread = threading.Thread(target=self._work, daemon=True, name=f"{self._name}-{len(self._threads)}")
                self._threads.append(thread)
                thread.start()  # may raise (no more threads): the caller's term fails and says so
        return self

    @property
    def busy(self) -> int:
        with self._lock:
            return len(self._threads) - self._idle

    def submit(self, work: Work) -> None:
        """Hand `work` to an idle worker, or raise PoolFull. Never queues behind a busy worker."""
        if not self._threads:
            self.start()
        with self._lock:
            if self._closed or self._idle <= 0:
                raise PoolFull(f"all {self.size} workers are busy")
            self._idle -= 1
        self._queue.put(work)

    def _work(self) -> None:
        while True:
            work = self._queue.get()
            if work is None:
                return
            try:
                work()
            except BaseException:  # noqa: BLE001 - the runner reports the job's errors; a worker never dies
                log.exception("a worker's run failed to report")
            finally:
                with self._lock:
                    self._idle += 1

    def close(self) -> None:
        """Let idle workers end (a busy one ends after its run; the process may end first: they are daemons)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            count = len(self._threads)
        for _ in range(count):
            self._queue.put(None)
