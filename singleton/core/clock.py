"""Clocks are passed in, so tests move time forward instead of sleeping (as kazoo's lease recipe does)."""
from __future__ import annotations

import threading
import time
from typing import Protocol


class Clock(Protocol):
    def monotonic(self) -> float:
        """Seconds on a clock that never steps; the only clock used for lease arithmetic and sleeping."""

    def wall(self) -> float:
        """Unix time in seconds; used only to name slots (whole seconds) and to report."""


class SystemClock:
    def monotonic(self) -> float:
        return time.monotonic()

    def wall(self) -> float:
        return time.time()


class FakeClock:
    """A clock that moves only when told to. `step_wall` models an NTP step or a manual date change."""

    def __init__(self, wall: float = 1_700_000_000.0, monotonic: float = 1000.0) -> None:
        self._lock = threading.Lock()
        self._mono = monotonic
        self._wall = wall

    def monotonic(self) -> float:
        with self._lock:
            return self._mono

    def wall(self) -> float:
        with self._lock:
            return self._wall

    def advance(self, seconds: float) -> None:
        """Time passes: both clocks move together."""
        if seconds < 0:
            raise ValueError("time does not go backwards; use step_wall for a wall-clock step")
        with self._lock:
            self._mono += seconds
            self._wall += seconds

    def step_wall(self, seconds: float) -> None:
        """The wall clock jumps (either way); the monotonic clock does not move."""
        with self._lock:
            self._wall += seconds
