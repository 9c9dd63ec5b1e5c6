"""LeaseKeeper: the leader's local view of its lease, and the step-down rules. No I/O.

Remaining TTL is computed on the monotonic clock from the *send* time of the last good renewal:
etcd restarted the TTL no earlier than that send, so `sent_at + ttl` is never later than the real
expiry at etcd. Trusting the receive time could overestimate by the whole round trip.
"""
from __future__ import annotations

import enum
import threading


class StepDownReason(enum.Enum):
    LEASE_EXPIRING = "lease_expiring"  # remaining TTL fell below min_remaining_ttl_s
    RENEWALS_FAILED = "renewals_failed"  # max_failed_renewals renewals in a row failed
    LEASE_LOST = "lease_lost"  # etcd says the lease is gone
    LEADERSHIP_LOST = "leadership_lost"  # the leader key was deleted or replaced behind our back
    RESIGNED = "resigned"  # asked to hand over (operator or API)
    SHUTDOWN = "shutdown"  # SIGTERM / SIGINT / stop()
    JOB_HUNG = "job_hung"  # the job was told to cancel (its timeout) and still ran a grace period later
    CLAIM_REFUSED = "claim_refused"  # etcd refused our claim of a slot: the term or the run chain is no longer ours
    TICKER_FAILED = "ticker_failed"  # an unexpected error in the tick loop (e.g. no thread could be started)

    @property
    def graceful(self) -> bool:
        """Whether the leader still holds a valid lease and can hand over the next slot itself."""
        return self in (StepDownReason.RESIGNED, StepDownReason.SHUTDOWN)


class LeaseKeeper:
    """Thread-safe: the keepalive thread records renewals, the ticker asks before every tick."""

    def __init__(
        self,
        lease_id: int,
        granted_ttl_s: float,
        sent_at: float,
        *,
        min_remaining_ttl_s: float,
        max_failed_renewals: int,
    ) -> None:
        self.lease_id = lease_id
        self._min_remaining_ttl_s = min_remaining_ttl_s
        self._max_failed_renewals = max_failed_renewals
        self._lock = threading.Lock()
        self._expires_at = sent_at + granted_ttl_s
        self._last_sent_at = sent_at
        self._failures = 0
        self._lost: StepDownReason | None = None

    def renewal_succeeded(self, sent_at: float, granted_ttl_s: float) -> None:
        with self._lock:
            if granted_ttl_s <= 0:  # etcd answers TTL 0 for a lease it no longer has
                self._lost = StepDownReason.LEASE_LOST
                return
            self._expires_at = max(self._expires_at, sent_at + granted_ttl_s)
            self._last_sent_at = max(self._last_sent_at, sent_at)
            self._failures = 0

    def renewal_failed(self) -> int:
        """Count a failed renewal (error or deadline); returns the failures in a row."""
        with self._lock:
            self._failures += 1
            return self._failures

    def mark_lost(self, reason: StepDownReason) -> None:
        with self._lock:
            if self._lost is None:
                self._lost = reason

    def remaining_s(self, now: float) -> float:
        with self._lock:
            return self._expires_at - now

    @property
    def expires_at(self) -> float:
        with self._lock:
            return self._expires_at

    @property
    def failures_in_a_row(self) -> int:
        with self._lock:
            return self._failures

    def step_down_reason(self, now: float) -> StepDownReason | None:
        """None while the lease is safe to tick on; else why the leader must step down now."""
        with self._lock:
            if self._lost is not None:
                return self._lost
            if self._failures >= self._max_failed_renewals:
                return StepDownReason.RENEWALS_FAILED
            if self._expires_at - now < self._min_remaining_ttl_s:
                return StepDownReason.LEASE_EXPIRING
            return None
