"""In-process helpers for tests of Singletons: a recording job with the safety checks, and a bounded wait."""
from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from singleton import Config, Role, Singleton, TickContext

FAST = {"lease_ttl_s": 3, "keepalive_interval_s": 1.0, "min_remaining_ttl_s": 0.6}


@dataclass
class Run:
    replica: str
    token: int
    slot: int
    start: float
    end: float | None = None


@dataclass
class Recorder:
    """A job that records every tick with monotonic start/end, shared by several replicas."""

    hold_s: float = 0.05
    runs: list[Run] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self, ctx: TickContext) -> None:
        run = Run(ctx.replica_id, ctx.fencing_token, ctx.slot, time.monotonic())
        with self.lock:
            self.runs.append(run)
        ctx.cancel_event.wait(self.hold_s)
        run.end = time.monotonic()

    def by(self, replica: str) -> list[Run]:
        with self.lock:
            return [r for r in self.runs if r.replica == replica]

    def assert_safe(self) -> None:
        """No two ticks at once, no slot twice, tokens grow with each change of leader."""
        with self.lock:
            runs = sorted(self.runs, key=lambda r: r.start)
        for a, b in zip(runs, runs[1:]):
            assert a.end is None or b.start >= a.end, f"overlap: {a} and {b}"
        slots = [r.slot for r in runs]
        assert len(slots) == len(set(slots)), f"a slot ran twice: {slots}"
        tokens = [r.token for r in runs]
        changes = [b for a, b in zip(tokens, tokens[1:]) if a != b]
        assert all(y > x for x, y in zip([tokens[0], *changes] if tokens else [], changes)), tokens


def make(endpoints: object, name: str, replica: str, job: Callable[[TickContext], object],
         **timings: float) -> Singleton:
    return Singleton(Config(endpoints=endpoints, name=name, replica_id=replica, **timings), job)  # type: ignore[arg-type]


def wait_for(predicate: Callable[[], object], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.02)


def wait_standing_by(s: Singleton, leader_id: str, timeout_s: float) -> None:
    """Wait until `s` has lost its campaign to `leader_id` and follows it: from then on it only watches
    the leader key, from the revision its campaign was decided at, so it misses no vacancy however late
    the watch stream opens (a few ms). Use before a handover that the standby must take at once."""
    wait_for(lambda: s.role is Role.FOLLOWER and s.status().leader_id == leader_id, timeout_s,
             f"{s.config.replica_id} to stand by behind {leader_id}")
