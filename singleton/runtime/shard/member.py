"""Sharding's one lease per replica: granted once, registered as the member record, renewed by one keepalive thread,
and backing every group term the replica holds. Its trouble (renewals failing, TTL running low) is every term's
trouble: each term checks it before every run, exactly as a single leader checks its own lease.

`GroupKeeper` is one term's view of that lease: the shared renewals and expiry, plus a loss of its own (its key
deleted or replaced behind its back ends that term only).
"""
from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable, Sequence

import tenacity

from singleton.backends.abc import Backend
from singleton.core.clock import Clock
from singleton.core.config import Config
from singleton.core.errors import BackendError
from singleton.core.lease import LeaseKeeper, StepDownReason
from singleton.core.repeats import RepeatedFailures
from singleton.v1.leader_pb2 import MemberRecord

log = logging.getLogger("singleton")


class GroupKeeper(LeaseKeeper):
    """A term's keeper over the replica's shared lease: reads go to `shared`, `mark_lost` stays here."""

    def __init__(self, shared: LeaseKeeper) -> None:  # noqa: D107 - no super().__init__: nothing of its own to keep
        self.shared = shared
        self.lease_id = shared.lease_id
        self._own_lost: StepDownReason | None = None
        self._own_lock = threading.Lock()

    def renewal_succeeded(self, sent_at: float, granted_ttl_s: float) -> None:
        raise AssertionError("a group term never renews: the member lease does")

    def renewal_failed(self) -> int:
        raise AssertionError("a group term never renews: the member lease does")

    def mark_lost(self, reason: StepDownReason) -> None:
        with self._own_lock:
            if self._own_lost is None:
                self._own_lost = reason

    def remaining_s(self, now: float) -> float:
        return self.shared.remaining_s(now)

    @property
    def expires_at(self) -> float:
        return self.shared.expires_at

    @property
    def failures_in_a_row(self) -> int:
        return self.shared.failures_in_a_row

    def step_down_reason(self, now: float) -> StepDownReason | None:
        with self._own_lock:
            if self._own_lost is not None:
                return self._own_lost
        return self.shared.step_down_reason(now)


def backoff_s(wait: tenacity.wait.wait_base, attempt: int) -> float:
    """tenacity decides the back-off before `attempt` (the loops here retry many things at once, not one call)."""
    state = tenacity.RetryCallState(tenacity.Retrying(), None, (), {})
    state.attempt_number = attempt
    return float(wait(state))


def member_record(config: Config, lease_id: int, wall_s: float, groups: Sequence[str]) -> bytes:
    return MemberRecord(replica_id=config.replica_id, host=socket.gethostname(), pid=os.getpid(), lease_id=lease_id,
                        registered_at_unix_s=wall_s, groups=sorted(groups)).SerializeToString()


class MemberLease:
    """The member's lease and record. `keeper` is the healthy lease's LeaseKeeper, or None while there is none (not
    granted yet, or in trouble and waiting for the terms on it to end before it is replaced)."""

    def __init__(self, config: Config, backend: Backend, clock: Clock, groups: Sequence[str],
                 stop: threading.Event, on_change: Callable[[], None],
                 terms_on: Callable[[int], tuple[int, int]]) -> None:
        self.config, self.backend, self.clock = config, backend, clock
        self._groups = list(groups)
        self._stop = stop  # the replica stops: keep renewing until release()
        self._release = threading.Event()  # every term has ended: revoke and end
        self._abandon = False  # a job ignored its cancel: end without revoking (the lease lapses by itself)
        self._on_change = on_change  # after every renewal and every change of `keeper`: the terms re-check
        self._terms_on = terms_on  # (terms still running, terms left with a job that ignored its cancel) on a lease
        self.keeper: LeaseKeeper | None = None
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._failures = RepeatedFailures(log, "could not register this member", clock=clock.monotonic)

    def start(self) -> MemberLease:
        self._thread = threading.Thread(target=self._run, daemon=True, name="singleton-member")
        self._thread.start()
        return self

    def set_groups(self, groups: Sequence[str]) -> bool:
        """Change the groups this member offers to lead (a resign withdraws some for a while; a stop all). False when
        the record could not be written (the caller tries again)."""
        with self._lock:
            self._groups = list(groups)
            keeper = self.keeper
        if keeper is None:
            return False  # the next registration writes them
        try:
            self.backend.put_leased(self.config.member_key(), member_record(
                self.config, keeper.lease_id, self.clock.wall(), groups), keeper.lease_id,
                self.config.call_timeout_s)
            return True
        except BackendError as err:
            log.warning("could not update this member's groups: %s", err)
            return False

    def release(self, timeout_s: float) -> None:
        """After the last term ended: revoke the lease (the member record goes with it)."""
        self._release.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def abandon(self) -> None:
        """Stop renewing but revoke nothing: a job that ignored its cancel may still write under a group's key."""
        self._abandon = True
        self._release.set()
        if self._thread is not None:
            self._thread.join(self.config.call_timeout_s + 1.0)

    # --- the thread ---------------------------------------------------------------------------------
    def _run(self) -> None:
        cfg = self.config
        wait = tenacity.wait_exponential_jitter(multiplier=0.1, max=cfg.campaign_backoff_max_s, jitter=0.2)
        attempt = 0
        while not self._release.is_set():
            if self._stop.is_set():  # stopping before we ever held a lease: nothing to hand over
                self._release.wait()
                return
            keeper = self._register()
            if keeper is None:
                attempt += 1
                self._release.wait(backoff_s(wait, attempt))
                continue
            attempt = 0
            self._failures.recovered()
            self._keep(keeper)
            with self._lock:
                self.keeper = None
            self._on_change()
            self._retire(keeper)

    def _register(self) -> LeaseKeeper | None:
        cfg = self.config
        sent_at = self.clock.monotonic()
        try:
            lease = self.backend.grant_lease(int(cfg.lease_ttl_s), cfg.call_timeout_s)
        except BackendError as err:
            self._failures.failed(err)
            return None
        with self._lock:
            groups = list(self._groups)
        try:
            self.backend.put_leased(cfg.member_key(), member_record(cfg, lease.lease_id, self.clock.wall(), groups),
                                    lease.lease_id, cfg.call_timeout_s)
        except BackendError as err:
            self._failures.failed(err)
            self._revoke(lease.lease_id)
            return None
        keeper = LeaseKeeper(lease.lease_id, lease.ttl_s, sent_at, min_remaining_ttl_s=cfg.min_remaining_ttl_s,
                             max_failed_renewals=cfg.max_failed_renewals)
        with self._lock:
            self.keeper = keeper
        log.info("member %s registered with lease %x for %d groups", cfg.replica_id, lease.lease_id, len(groups))
        self._on_change()
        return keeper

    def _keep(self, keeper: LeaseKeeper) -> None:
        """Renew every keepalive_interval_s (each with its own deadline) until the lease is in trouble, or every term
        has ended after a stop."""
        cfg = self.config
        next_at = self.clock.monotonic() + cfg.keepalive_interval_s
        while not self._release.wait(max(0.0, next_at - self.clock.monotonic())):
            sent_at = self.clock.monotonic()
            try:
                ttl = self.backend.keep_alive_once(keeper.lease_id, cfg.renewal_deadline_s)
                keeper.renewal_succeeded(sent_at, ttl)
            except BackendError as err:
                log.warning("member lease renewal failed (%d in a row): %s", keeper.renewal_failed(), err)
            self._on_change()
            trouble = keeper.step_down_reason(self.clock.monotonic())
            if trouble is not None:
                log.warning("member lease %x in trouble (%s): every group it backs steps down", keeper.lease_id,
                            trouble.value)
                return
            next_at = sent_at + cfg.keepalive_interval_s

    def _retire(self, keeper: LeaseKeeper) -> None:
        """The terms on a lease in trouble step down on their own (their pre-run check). Until the last has ended, keep
        renewing (without trusting the lease again: the keeper stays in trouble), as a single leader renews through
        its step-down, so that the lease cannot lapse under a cancelled run finishing its grace. Then revoke it (a
        new one replaces it), unless a job ignored its cancel: that term's key must lapse by itself."""
        cfg = self.config
        next_at = self.clock.monotonic()
        while not self._release.is_set():
            running, _ = self._terms_on(keeper.lease_id)
            if not running:
                break
            if self.clock.monotonic() >= next_at:
                next_at = self.clock.monotonic() + cfg.keepalive_interval_s
                try:
                    if self.backend.keep_alive_once(keeper.lease_id, cfg.renewal_deadline_s) <= 0:
                        break  # gone at etcd: nothing left to keep
                except BackendError:
                    pass
            self._release.wait(0.05)
        _, lapsing = self._terms_on(keeper.lease_id)
        if not self._abandon and not lapsing:
            self._revoke(keeper.lease_id)

    def _revoke(self, lease_id: int) -> None:
        try:
            self.backend.revoke_lease(lease_id, self.config.call_timeout_s)
        except BackendError as err:
            log.warning("could not revoke member lease %x (it expires by itself): %s", lease_id, err)
