"""In-process helpers for tests of Singletons: a recording job with the safety checks, and a bounded wait."""
from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from singleton import Config, Singleton, TickContext
from singleton.core.timings import FAST, Timings
from singleton.dev.ledger import Tick, safety_violations


@dataclass
class Recorder:
    """A job that records every tick, with monotonic start and end, as the tick ledger does; shared by
    several replicas of one process."""

    hold_s: float = 0.05
    runs: list[Tick] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self, ctx: TickContext) -> None:
        run = Tick(ctx.replica_id, os.getpid(), ctx.fencing_token, ctx.slot, time.monotonic(), time.time())
        with self.lock:
            self.runs.append(run)
        ctx.cancel_event.wait(self.hold_s)
        run.end_mono = time.monotonic()

    def by(self, replica: str) -> list[Tick]:
        with self.lock:
            return [r for r in self.runs if r.replica == replica]

    def assert_safe(self) -> None:
        """The ledger's invariants: no two ticks at once, no slot twice, tokens grow with each change of leader."""
        with self.lock:
            problems = safety_violations(self.runs)
        assert not problems, "; ".join(problems)


def make(endpoints: object, name: str, replica: str, job: Callable[[TickContext], object],
         timings: Timings = FAST, **overrides: float) -> Singleton:
    kwargs = {**timings.config_kwargs(), **overrides}
    return Singleton(Config(endpoints=endpoints, name=name, replica_id=replica, **kwargs), job)  # type: ignore[arg-type]


def wait_for(predicate: Callable[[], object], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.02)
