"""What every replica counts, kept in-process (Stats) and sent to OpenTelemetry instruments.

The instruments come from the global OpenTelemetry API and are no-ops until a MeterProvider or
TracerProvider is installed (`ops.http.setup_telemetry` does that for `singleton run`; a library
user installs their own). Names are under `singleton.`; durations are in seconds.
"""
from __future__ import annotations

import threading
import weakref
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from opentelemetry import metrics, trace
from opentelemetry.metrics import CallbackOptions, Observation

from singleton.core.lease import StepDownReason

meter = metrics.get_meter("singleton")
tracer = trace.get_tracer("singleton")

_elections_won = meter.create_counter("singleton.elections_won", description="Campaigns this replica won")
_step_downs = meter.create_counter("singleton.step_downs", description="Step-downs, by reason")
_ticks = meter.create_counter("singleton.ticks", description="Slots handled, by outcome: run, ok, failed, "
                              "skipped (previous run still going), late (woken after its second)")
_renewals_failed = meter.create_counter("singleton.renewals_failed", description="Lease renewals that failed")
_renewal_latency = meter.create_histogram("singleton.renewal_latency", unit="s", description="Lease renewal round trip")
_job_duration = meter.create_histogram("singleton.job_duration", unit="s", description="Job run time")
_tick_lateness = meter.create_histogram("singleton.tick_lateness", unit="s", description="Tick start minus slot time")
_missed_slots = meter.create_counter("singleton.missed_slots", description="Slots that did not run, by reason: "
                                     "takeover (nobody claimed them across a leader change), coalesced (covered by "
                                     "one catch-up run), beyond_window, overrun, late, unclaimed (etcd did not answer)")
_takeover_time = meter.create_histogram("singleton.takeover_time", unit="s",
                                        description="How long the leader key was vacant before this replica won")

TICK_OUTCOMES = ("run", "ok", "failed", "skipped", "late", "timed_out")
MISSED_REASONS = ("takeover", "coalesced", "beyond_window", "overrun", "late", "unclaimed", "pool_full", "paused",
                  "skip_next")

# Live gauges read each replica's state through a callback; replicas register themselves here.
_gauge_sources: weakref.WeakSet[GaugeSource] = weakref.WeakSet()


class GaugeSource:
    replica_id: str

    def gauge_values(self) -> dict[str, float]:  # is_leader, fencing_token, lease_remaining, clock_skew, job_overdue,
        # workers_busy
        raise NotImplementedError


def _observe(name: str) -> Callable[[CallbackOptions], Iterable[Observation]]:
    def callback(_options: CallbackOptions) -> Iterable[Observation]:
        for source in list(_gauge_sources):
            yield Observation(source.gauge_values()[name], {"replica_id": source.replica_id})
    return callback


meter.create_observable_gauge("singleton.is_leader", [_observe("is_leader")], description="1 while this replica leads")
meter.create_observable_gauge("singleton.fencing_token", [_observe("fencing_token")],
                              description="The current term's fencing token (0 when not leading)")
meter.create_observable_gauge("singleton.clock_skew", [_observe("clock_skew")], unit="s",
                              description="The last leader's wall clock minus ours, as measured at our last takeover")
meter.create_observable_gauge("singleton.workers_busy", [_observe("workers_busy")],
                              description="Workers of the pool running a sync job now; a hung job keeps its worker")
meter.create_observable_gauge("singleton.job_overdue", [_observe("job_overdue")], unit="s",
                              description="How long the running tick has gone on since it was told to cancel (past "
                                          "its --job-timeout, or at a step-down); 0 when none is")
meter.create_observable_gauge("singleton.lease_remaining", [_observe("lease_remaining")], unit="s",
                              description="Lease left, by the leader's local monotonic clock (0 when not leading)")


def register_gauges(source: GaugeSource) -> None:
    _gauge_sources.add(source)


@dataclass
class Stats:
    """Plain counters, readable in-process (tests, the admin API), mirrored to the instruments above."""

    replica_id: str
    elections_won: int = 0
    renewals_failed: int = 0
    step_downs: Counter[str] = field(default_factory=Counter)
    ticks: Counter[str] = field(default_factory=Counter)
    missed_slots: Counter[str] = field(default_factory=Counter)
    # Per named job: (job, outcome) and (job, reason). The legacy single job counts only in the totals above, and its
    # series carry no job_name label, exactly as before several jobs existed.
    job_ticks: Counter[tuple[str, str]] = field(default_factory=Counter)
    job_missed: Counter[tuple[str, str]] = field(default_factory=Counter)
    clock_skew_s: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        # The counters people alert on exist at 0 from the start: a series that first appears at 1 hides that
        # first increase from rate()/increase().
        _elections_won.add(0, self._attrs())
        _renewals_failed.add(0, self._attrs())
        for reason in StepDownReason:
            _step_downs.add(0, self._attrs(reason=reason.value))
        for outcome in TICK_OUTCOMES:
            _ticks.add(0, self._attrs(outcome=outcome))
        # A standby's missed-slot series must exist before its takeover counts the first ones (the alert on
        # increase() would otherwise see a series born at N, with no increase).
        for missed in MISSED_REASONS:
            _missed_slots.add(0, self._attrs(reason=missed))

    def _attrs(self, job: str | None = None, **extra: str) -> dict[str, str]:
        # `job_name`, not `job`: Prometheus's own target label `job` would rename ours to `exported_job`.
        return {"replica_id": self.replica_id, **({"job_name": job} if job is not None else {}), **extra}

    def register_job(self, job: str) -> None:
        """A named job's counters exist at 0 from the start, as the replica's do."""
        for outcome in TICK_OUTCOMES:
            _ticks.add(0, self._attrs(job, outcome=outcome))
        for reason in MISSED_REASONS:
            _missed_slots.add(0, self._attrs(job, reason=reason))

    def won(self, vacant_for_s: float | None) -> None:
        with self._lock:
            self.elections_won += 1
        _elections_won.add(1, self._attrs())
        if vacant_for_s is not None:
            _takeover_time.record(vacant_for_s, self._attrs())

    def stepped_down(self, reason: str) -> None:
        with self._lock:
            self.step_downs[reason] += 1
        _step_downs.add(1, self._attrs(reason=reason))

    def renewal(self, latency_s: float | None) -> None:
        """A renewal round trip; None when it failed."""
        if latency_s is None:
            with self._lock:
                self.renewals_failed += 1
            _renewals_failed.add(1, self._attrs())
        else:
            _renewal_latency.record(latency_s, self._attrs())

    def tick(self, outcome: str, lateness_s: float | None = None, job: str | None = None) -> None:
        with self._lock:
            self.ticks[outcome] += 1
            if job is not None:
                self.job_ticks[job, outcome] += 1
        _ticks.add(1, self._attrs(job, outcome=outcome))
        if lateness_s is not None:
            _tick_lateness.record(lateness_s, self._attrs(job))

    def missed(self, reason: str, count: int, job: str | None = None) -> None:
        if count <= 0:
            return
        with self._lock:
            self.missed_slots[reason] += count
            if job is not None:
                self.job_missed[job, reason] += count
        _missed_slots.add(count, self._attrs(job, reason=reason))

    def skew(self, seconds: float) -> None:
        self.clock_skew_s = seconds

    def job_done(self, duration_s: float, failed: bool, job: str | None = None) -> None:
        self.tick("failed" if failed else "ok", job=job)
        _job_duration.record(duration_s, self._attrs(job))

    def counters(self) -> dict[str, int]:
        with self._lock:
            out = {"elections_won": self.elections_won, "renewals_failed": self.renewals_failed,
                   "step_downs": sum(self.step_downs.values())}
            for outcome in TICK_OUTCOMES:
                out[f"ticks_{outcome}"] = self.ticks[outcome]
            return out
