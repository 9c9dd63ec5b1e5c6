"""SIGTERM/SIGINT for the asyncio entry points (`await app.run_async()`, `async with app:`): the running loop's
own signal handling, taken only where nobody else handles the signal, and put back afterwards."""
from __future__ import annotations

import asyncio
import functools
import logging
import os
import signal
import threading
from collections.abc import Callable
from typing import Any

log = logging.getLogger("singleton")

SIGNALS = (signal.SIGTERM, signal.SIGINT)


def _unclaimed(handler: Any) -> bool:
    """True when the handler is the process default, or asyncio.run's own SIGINT handler (it only cancels the
    main task, which would skip the graceful stop's return value). Anything else is the app's (uvicorn, a
    handler of its own, SIG_IGN): we leave it alone."""
    if handler in (signal.SIG_DFL, signal.default_int_handler):
        return True
    func = handler.func if isinstance(handler, functools.partial) else None
    return getattr(func, "__qualname__", "") == "Runner._on_sigint" and \
        getattr(func, "__module__", "") == "asyncio.runners"


class LoopSignals:
    """Installs `on_signal` for SIGTERM/SIGINT on the running loop (main thread only, unclaimed signals only).
    A second signal ends the process at once (128 + signal number): the operator insists."""

    def __init__(self, loop: asyncio.AbstractEventLoop, on_signal: Callable[[signal.Signals], None]) -> None:
        self._loop, self._on_signal = loop, on_signal
        self._previous: dict[signal.Signals, Any] = {}
        self.received: signal.Signals | None = None

    def install(self) -> LoopSignals:
        if threading.current_thread() is not threading.main_thread():
            return self  # only the main thread may set handlers
        for signum in SIGNALS:
            previous = signal.getsignal(signum)
            if not _unclaimed(previous):
                continue
            try:
                self._loop.add_signal_handler(signum, self._handle, signum)
            except (NotImplementedError, RuntimeError, ValueError):  # no loop signal support (Windows)
                continue
            self._previous[signum] = previous
        return self

    def _handle(self, signum: signal.Signals) -> None:
        if self.received is not None:
            os._exit(128 + signum)
        self.received = signum
        log.info("received %s: stopping gracefully", signum.name)
        self._on_signal(signum)

    def restore(self) -> None:
        """Put back what was there: remove_signal_handler alone would leave the default, not the previous."""
        for signum, previous in self._previous.items():
            self._loop.remove_signal_handler(signum)
            signal.signal(signum, previous)
        self._previous.clear()

    @property
    def installed(self) -> tuple[signal.Signals, ...]:
        return tuple(self._previous)
