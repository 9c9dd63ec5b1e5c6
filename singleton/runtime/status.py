"""What a replica tells about itself: its status (admin API, WatchStatus), gauges, liveness and readiness.

Mixed into Singleton; reads its state, never changes the election.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from singleton.core.clock import Clock
from singleton.core.config import Config
from singleton.core.election import Election, Role
from singleton.core.records import decode_leader
from singleton.runtime.telemetry import GaugeSource, Stats

if TYPE_CHECKING:
    from singleton.backends.abc import Backend
    from singleton.runtime.registry import JobRegistry
    from singleton.runtime.tracks import AllJobs
    from singleton.runtime.leadership import Leadership


@dataclass(frozen=True)
class ReplicaStatus:
    replica_id: str
    role: str
    leader_id: str  # as this replica last saw it; "" when none is known
    fencing_token: int  # ours while leading, else the leader's as last seen (0: none)
    lease_remaining_s: float  # local view, while leading
    last_tick_slot: int
    last_tick_unix_s: float
    counters: dict[str, int]
    last_step_down_reason: str


class StatusMixin(GaugeSource):
    config: Config
    clock: Clock
    election: Election
    stats: Stats
    backend: Backend
    _leadership: Leadership | None
    _jobs: AllJobs | None
    _registry: JobRegistry
    _leader_seen: tuple[str, int]
    _last_tick: tuple[int, float]
    _runner_thread: threading.Thread | None
    _status_changed: threading.Condition
    _status_version: int

    @property
    def is_leader(self) -> bool:
        return self.election.may_tick(self.clock.monotonic())

    def _see_leader(self, kv: Any) -> None:
        if kv is None:
            seen = ("", 0)
        else:
            record = decode_leader(kv.value)
            seen = (record.replica_id if record else "?", kv.create_revision)
        if seen != self._leader_seen:
            self._leader_seen = seen
            self._changed()

    def _changed(self) -> None:
        with self._status_changed:
            self._status_version += 1
            self._status_changed.notify_all()

    def wait_for_change(self, version: int, timeout_s: float) -> int:
        """Block until the status version passes `version` (or timeout); returns the current version."""
        with self._status_changed:
            self._status_changed.wait_for(lambda: self._status_version != version, timeout_s)
            return self._status_version

    @property
    def status_version(self) -> int:
        return self._status_version

    def status(self) -> ReplicaStatus:
        leadership, term = self._leadership, self.election.term
        leading = leadership is not None and term is not None
        if leading and leadership is not None and term is not None:
            leader_id, token = self.config.replica_id, term.fencing_token
            remaining = max(0.0, term.keeper.remaining_s(self.clock.monotonic()))
            last = (leadership.last_started_slot or self._last_tick[0],
                    leadership.last_tick_wall or self._last_tick[1])
        else:
            (leader_id, token), remaining, last = self._leader_seen, 0.0, self._last_tick
        reason = self.election.step_down_reason
        return ReplicaStatus(self.config.replica_id, self.election.role.value, leader_id, token, remaining,
                             last[0], last[1], self.stats.counters(), reason.value if reason else "")

    def gauge_values(self) -> dict[str, float]:
        leading = self.is_leader
        term = self.election.term
        return {"is_leader": 1.0 if leading else 0.0,
                "fencing_token": float(term.fencing_token) if leading and term else 0.0,
                "lease_remaining": max(0.0, term.keeper.remaining_s(self.clock.monotonic())) if leading and term
                else 0.0,
                "clock_skew": self.stats.clock_skew_s, "job_overdue": self._job_overdue_s(),
                "workers_busy": float(pool.busy) if (pool := self._registry.pool) is not None else 0.0}

    def _job_overdue_s(self) -> float:
        running = self._jobs.hung_candidate() if self._jobs is not None else None
        if running is None or running.cancelled_at is None:
            return 0.0
        return max(0.0, self.clock.monotonic() - running.cancelled_at)

    def health(self) -> list[str]:
        """Problems that mean this process is wedged (liveness); empty when healthy."""
        problems = []
        thread = self._runner_thread
        if thread is None or not thread.is_alive():
            problems.append("the replica loop is not running")
        now, cfg = self.clock.monotonic(), self.config
        running = self._jobs.hung_candidate() if self._jobs is not None else None
        if running is not None and running.cancelled_at is not None \
                and now - running.cancelled_at >= cfg.job_cancel_grace_s:
            problems.append(f"the tick of slot {running.slot} still runs {now - running.cancelled_at:.1f} s after it "
                            f"was told to cancel (hung job; restart the process)")
        leadership = self._leadership
        if leadership is not None:
            if now - leadership.ticker_beat > 3.0:  # it wakes at least once a second
                problems.append(f"ticker loop stuck for {now - leadership.ticker_beat:.1f} s")
            keepalive_bound = cfg.keepalive_interval_s + 2 * cfg.renewal_deadline_s + 2.0
            if now - leadership.keepalive_beat > keepalive_bound:
                problems.append(f"keepalive loop stuck for {now - leadership.keepalive_beat:.1f} s")
        return problems

    def readiness(self) -> list[str]:
        """Reasons this replica is not ready: not connected to etcd, or not in a known role."""
        problems = []
        role = self.election.role
        if role not in (Role.LEADER, Role.FOLLOWER):
            problems.append(f"role is {role.value}")
        window = max(5.0, 2 * self.config.keepalive_interval_s + self.config.call_timeout_s)
        silent = self.clock.monotonic() - self.backend.last_ok_at  # backends stamp it on the same clock
        if self.backend.last_ok_at == float("-inf"):
            problems.append("no answer from etcd yet")
        elif silent > window:
            problems.append(f"no answer from etcd for {silent:.1f} s")
        return problems
