"""User callbacks (`on_elected`, `on_stepped_down`) run here, on a thread of their own, never on the safety path.

The election, the keepalive and the step-down only *post* an event; a slow or failing callback can delay
other callbacks, never a renewal, a cancel, a revoke or the next campaign. Callbacks run one at a time in
the order the events happened. An `async def` callback is awaited: on the caller's event loop when the
replica was started from asyncio, else on a loop of this thread's own.
"""
from __future__ import annotations

import asyncio
import inspect
import logging
import queue
import threading
from collections.abc import Callable, Sequence
from typing import Any

log = logging.getLogger("singleton")

_STOP = object()


class Listeners:
    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.loop = loop  # the caller's loop, for async callbacks; set by the asyncio entry points
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._pending = 0
        self._idle = threading.Condition(self._lock)

    def post(self, callbacks: Sequence[Callable[[Any], Any]], arg: Any) -> None:
        """Queue a call of each callback with `arg`; returns at once."""
        if not callbacks:
            return
        with self._lock:
            self._pending += 1
            if self._thread is None:
                self._thread = threading.Thread(target=self._serve, daemon=True, name="singleton-listeners")
                self._thread.start()
        self._queue.put((list(callbacks), arg))

    def drain(self, timeout_s: float) -> bool:
        """Wait until every posted event has been delivered (bounded); True when none is left."""
        with self._idle:
            return self._idle.wait_for(lambda: self._pending == 0, timeout_s)

    def close(self) -> None:
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is not None:
            self._queue.put(_STOP)

    def _serve(self) -> None:
        own_loop: asyncio.AbstractEventLoop | None = None
        try:
            while True:
                item = self._queue.get()
                if item is _STOP:
                    return
                callbacks, arg = item
                for fn in callbacks:
                    try:
                        result = fn(arg)
                        if inspect.isawaitable(result):
                            if self.loop is not None and not self.loop.is_closed():
                                asyncio.run_coroutine_threadsafe(result, self.loop).result()  # type: ignore[arg-type]
                            else:
                                own_loop = own_loop or asyncio.new_event_loop()
                                own_loop.run_until_complete(result)
                    except BaseException:  # noqa: BLE001 - even SystemExit: a listener never ends the replica
                        log.exception("listener %r failed", fn)
                with self._idle:
                    self._pending -= 1
                    self._idle.notify_all()
        finally:
            if own_loop is not None:
                own_loop.close()
