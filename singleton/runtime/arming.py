"""Armed runs: a sync run handed to its worker at its claim (~0.25 s ahead), which sleeps until the slot's instant
and starts the job itself after an in-memory check, so the job's first line comes a timed wait's wake-up after the
instant instead of the tick loop's wake-up, its pass and a hand-off between threads (docs/BENCHMARKS.md, profile).

The tick loop stays the one that decides: it claims, arms (Ticker._arm), and settles each armed run a little after
its instant (started: counted as a run; not started: judged again on the loop's own path, as any claimed slot). The
worker only waits and checks, at its wake-up, what may have changed since the arming and costs no I/O: the lease
(LeaseKeeper.step_down_reason: the monotonic deadline, with its margin), a stop or resign requested, the claim still
ours, the slot still within its lateness limit, and nobody disarmed it (a step-down, a pause, the end of the term).
Started and disarmed exclude each other (one small lock per run), so whoever disarms learns whether it had started.
"""
from __future__ import annotations

import enum
import threading
from collections.abc import Callable

from singleton.core.clock import Clock


class ArmedState(enum.Enum):
    ARMED = "armed"  # waiting for its instant on its worker
    STARTED = "started"  # the checks passed at the instant: the job was called
    DISARMED = "disarmed"  # the loop (or the control watch) cancelled it before it started
    REFUSED = "refused"  # the worker's own check at the instant said no (lease, stop, claim, too late)


class Armed:
    """One run waiting for its instant. `may_start(now)` is the pre-run check: in-memory only, never I/O nor a lock
    the tick loop holds while it waits or claims. `on_drop` is called once if the run will never start."""

    def __init__(self, slot: int, at: float, max_lateness_s: float, clock: Clock,
                 may_start: Callable[[float], bool]) -> None:
        self.slot, self.at, self.max_lateness_s = slot, at, max_lateness_s
        self._clock, self._may_start = clock, may_start
        self._lock = threading.Lock()
        self._woken = threading.Event()
        self.state = ArmedState.ARMED
        self.started_at: float | None = None  # monotonic, when the checks passed
        self.on_drop: Callable[[], None] = lambda: None

    @property
    def lateness_s(self) -> float:
        return 0.0 if self.started_at is None else max(0.0, self.started_at - self.at)

    def wait(self) -> bool:
        """On the worker: sleep until the instant (a disarm wakes it at once), then `decide`."""
        while not self._woken.is_set():
            left = self.at - self._clock.monotonic()
            if left <= 0:
                break
            self._woken.wait(left)
        return self.decide(self._clock.monotonic())

    def decide(self, now: float) -> bool:
        """True: the run may start now (state STARTED); False: it never will. Called once, at the instant."""
        with self._lock:
            if self.state is not ArmedState.ARMED:
                return False
            # Never before the instant (a spurious early wake-up), never past the lateness limit, and only on a lease
            # that is still safe to run on: checked here, right before the job's first line.
            if now < self.at - 1e-6 or now - self.at >= self.max_lateness_s or not self._may_start(now):
                self.state = ArmedState.REFUSED
                self.on_drop()
                return False
            self.state, self.started_at = ArmedState.STARTED, now
            return True

    def disarm(self) -> bool:
        """Cancel the run if it has not started; True: it never will, False: it had already started."""
        with self._lock:
            if self.state is ArmedState.ARMED:
                self.state = ArmedState.DISARMED
                self.on_drop()
            started = self.state is ArmedState.STARTED
        self._woken.set()
        return not started

    def settled(self) -> ArmedState:
        with self._lock:
            return self.state
