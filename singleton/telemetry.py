"""Counters every replica keeps, mirrored to OpenTelemetry instruments (no-ops unless an SDK is set up)."""
from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass, field

from opentelemetry import metrics

_meter = metrics.get_meter("singleton")
_elections_won = _meter.create_counter("singleton.elections_won", description="Campaigns this replica won")
_step_downs = _meter.create_counter("singleton.step_downs", description="Step-downs, by reason")
_ticks = _meter.create_counter("singleton.ticks", description="Slots handled, by outcome")
_renewals_failed = _meter.create_counter("singleton.renewals_failed", description="Lease renewals that failed")
_job_duration = _meter.create_histogram("singleton.job_duration", unit="s", description="Job run time")
_tick_lateness = _meter.create_histogram("singleton.tick_lateness", unit="s", description="Tick start - slot time")


@dataclass
class Stats:
    """Plain counters, readable in-process (tests, `status`), and the same figures sent to OpenTelemetry.

    Tick outcomes: run (started), ok, failed (job raised), skipped (previous run still going), late
    (woken after the slot's second had passed: never run late).
    """

    replica_id: str
    elections_won: int = 0
    renewals_failed: int = 0
    step_downs: Counter[str] = field(default_factory=Counter)
    ticks: Counter[str] = field(default_factory=Counter)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def _attrs(self, **extra: str) -> dict[str, str]:
        return {"replica_id": self.replica_id, **extra}

    def won(self) -> None:
        with self._lock:
            self.elections_won += 1
        _elections_won.add(1, self._attrs())

    def stepped_down(self, reason: str) -> None:
        with self._lock:
            self.step_downs[reason] += 1
        _step_downs.add(1, self._attrs(reason=reason))

    def renewal_failed(self) -> None:
        with self._lock:
            self.renewals_failed += 1
        _renewals_failed.add(1, self._attrs())

    def tick(self, outcome: str, lateness_s: float | None = None) -> None:
        with self._lock:
            self.ticks[outcome] += 1
        _ticks.add(1, self._attrs(outcome=outcome))
        if lateness_s is not None:
            _tick_lateness.record(lateness_s, self._attrs())

    def job_done(self, duration_s: float, failed: bool) -> None:
        self.tick("failed" if failed else "ok")
        _job_duration.record(duration_s, self._attrs())

    def snapshot(self) -> dict[str, object]:
        with self._lock:
            return {"elections_won": self.elections_won, "renewals_failed": self.renewals_failed,
                    "step_downs": dict(self.step_downs), "ticks": dict(self.ticks)}
