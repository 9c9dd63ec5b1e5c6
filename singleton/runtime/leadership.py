"""One leadership term: the keepalive thread, the every-second ticker, and the step-down.

The ticker runs on the thread that won; the keepalive runs on its own thread and only records into the
LeaseKeeper, which the ticker consults before every tick. Neither waits on the job.
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

from singleton.backends.abc import Backend
from singleton.core.clock import Clock
from singleton.core.config import Config
from singleton.core.election import Election, Term
from singleton.core.errors import BackendError
from singleton.runtime.jobs import JobRunner, TickContext
from singleton.core.lease import StepDownReason
from singleton.core.records import Handover
from singleton.runtime.telemetry import Stats
from singleton.core.ticker import Verdict, check_due, first_plan, plan_next

log = logging.getLogger("singleton")


@dataclass
class TermOutcome:
    reason: StepDownReason
    last_started_slot: int | None


class Leadership:
    def __init__(self, config: Config, backend: Backend, clock: Clock, election: Election, term: Term,
                 jobs: JobRunner, stats: Stats, wake: threading.Event,
                 stop_reason: Callable[[], StepDownReason | None],
                 on_step_down: Callable[[StepDownReason], None] = lambda reason: None) -> None:
        self.config, self.backend, self.clock = config, backend, clock
        self.election, self.term, self.jobs, self.stats = election, term, jobs, stats
        self._wake = wake  # set by the keepalive after each renewal and by stop()/resign()
        self._stop_reason = stop_reason
        self._on_step_down = on_step_down  # told as soon as ticking stops, before the slow clean-up
        self._over = threading.Event()
        self.last_started_slot: int | None = None
        self.last_tick_wall: float | None = None
        # Heartbeats of the two loops, read by /healthz: a wedged loop stops beating.
        self.ticker_beat = self.keepalive_beat = clock.monotonic()

    @property
    def _tag(self) -> str:
        return f"replica={self.config.replica_id} token={self.term.fencing_token}"

    # --- keepalive thread -----------------------------------------------------------------------------
    def _keepalive_loop(self, first_sent_at: float) -> None:
        cfg, keeper = self.config, self.term.keeper
        next_at = first_sent_at + cfg.keepalive_interval_s
        self.keepalive_beat = self.clock.monotonic()
        while not self._over.wait(max(0.0, next_at - self.clock.monotonic())):
            sent_at = self.keepalive_beat = self.clock.monotonic()
            try:
                ttl = self.backend.keep_alive_once(keeper.lease_id, cfg.renewal_deadline_s)
                keeper.renewal_succeeded(sent_at, ttl)
                self.stats.renewal(self.clock.monotonic() - sent_at)
                if ttl <= 0:
                    log.warning("lease %x is gone at etcd %s", keeper.lease_id, self._tag)
            except BackendError as err:
                failures = keeper.renewal_failed()
                self.stats.renewal(None)
                log.warning("renewal failed (%d in a row) %s: %s", failures, self._tag, err)
            else:
                self._check_key_still_ours()
            self._wake.set()
            self.keepalive_beat = self.clock.monotonic()
            next_at = sent_at + cfg.keepalive_interval_s

    def _check_key_still_ours(self) -> None:
        """Someone deleting or replacing the leader key (an operator, a resign) ends the term too."""
        try:
            kv, _ = self.backend.get(self.config.leader_key, self.config.renewal_deadline_s)
        except BackendError as err:
            log.info("could not re-read the leader key %s: %s", self._tag, err)
            return
        if kv is None or kv.create_revision != self.term.fencing_token:
            self.term.keeper.mark_lost(StepDownReason.LEADERSHIP_LOST)

    # --- the ticker ------------------------------------------------------------------------------------
    def _resign_watch(self, start_revision: int, request_resign: Callable[[], None]) -> None:
        """`singleton resign` writes our token to the resign key; a watch (not a poll) brings it here."""
        try:
            for event in self.backend.watch(self.config.resign_key, start_revision, self._over):
                if not event.deleted and event.kv.value == str(self.term.fencing_token).encode():
                    log.info("resign requested through etcd %s", self._tag)
                    request_resign()
                    return
        except BackendError as err:
            log.info("resign watch ended %s: %s", self._tag, err)

    def run(self, first_sent_at: float, handover_last_slot: int | None, won_revision: int,
            request_resign: Callable[[], None]) -> TermOutcome:
        keepalive = threading.Thread(target=self._keepalive_loop, args=(first_sent_at,), daemon=True,
                                     name="singleton-keepalive")
        keepalive.start()
        threading.Thread(target=self._resign_watch, args=(won_revision + 1, request_resign), daemon=True,
                         name="singleton-resign-watch").start()
        try:
            reason = self._tick_until_step_down(handover_last_slot)
            self._step_down(reason, keepalive)
        finally:
            self._over.set()  # the keepalive and resign watch end with the term, whatever happened
        return TermOutcome(reason, self.last_started_slot)

    def _tick_until_step_down(self, handover_last_slot: int | None) -> StepDownReason:
        cfg, clock, keeper = self.config, self.clock, self.term.keeper
        plan = first_plan(clock.wall(), clock.monotonic(), handover_last_slot)
        log.info("first slot %d %s", plan.slot, self._tag)
        while True:
            self._wake.clear()
            mono, wall = clock.monotonic(), clock.wall()
            self.ticker_beat = mono
            # The lease check runs right before every tick, so a process that was paused past its lease
            # (GC, SIGSTOP, VM freeze) steps down instead of ticking.
            reason = self._stop_reason() or self.election.check(mono)
            if reason is not None:
                return reason
            due = check_due(plan, wall, mono)
            if due.clock_step_s:
                log.warning("wall clock stepped by %+.3f s %s; slots keep their order", due.clock_step_s, self._tag)
            if due.verdict is Verdict.WAIT:
                # Wake for the slot, or when the lease reaches its margin, whichever is first.
                margin_in = keeper.remaining_s(mono) - cfg.min_remaining_ttl_s
                self._wake.wait(max(0.0, min(due.wait_s, margin_in + 0.001)))
                continue
            if due.verdict is Verdict.TOO_LATE:
                self.stats.tick("late")
                log.warning("slot %d skipped: woke %.3f s late %s", plan.slot, due.lateness_s, self._tag)
            elif self.jobs.busy():
                self.stats.tick("skipped")
                log.warning("slot %d skipped: the previous run is still going %s", plan.slot, self._tag)
            else:
                self.jobs.start(TickContext(self.term.fencing_token, plan.slot, plan.scheduled_at,
                                            cfg.replica_id, threading.Event(), self.backend, cfg.leader_key,
                                            cfg.call_timeout_s, lateness_s=due.lateness_s))
                self.last_started_slot, self.last_tick_wall = plan.slot, wall
                self.stats.tick("run", due.lateness_s)
            plan = plan_next(plan.slot, clock.wall(), clock.monotonic())

    # --- stepping down -------------------------------------------------------------------------------
    def _step_down(self, reason: StepDownReason, keepalive: threading.Thread) -> None:
        cfg, keeper = self.config, self.term.keeper
        self.election.step_down(reason)
        self.stats.stepped_down(reason.value)
        log.warning("stepping down (%s) %s remaining=%.2fs", reason.value, self._tag,
                    keeper.remaining_s(self.clock.monotonic()))
        self._on_step_down(reason)
        if reason.graceful:
            self._finish_tick_while_renewing(cfg.stop_timeout_s)
            self._over.set()
            self._resign()
        else:
            self._over.set()
            self.jobs.cancel()  # the lease may be about to lapse: the job must stop writing now
        try:
            self.backend.revoke_lease(keeper.lease_id, cfg.call_timeout_s)
        except BackendError as err:
            log.warning("could not revoke lease %x (it expires by itself) %s: %s", keeper.lease_id, self._tag, err)
        keepalive.join(timeout=cfg.renewal_deadline_s + 1.0)

    def _finish_tick_while_renewing(self, timeout_s: float) -> None:
        """Let the tick in flight finish, keeping the lease alive meanwhile (the keepalive thread still
        runs): a standby must not take over while it runs. Cancel it at the timeout, or at once if the
        lease gets into trouble while we wait."""
        deadline = self.clock.monotonic() + timeout_s
        while not self.jobs.wait_idle(0.05):
            now = self.clock.monotonic()
            trouble = self.term.keeper.step_down_reason(now)
            if trouble is not None or now >= deadline:
                log.warning("cancelling the running tick (%s) %s",
                            trouble.value if trouble else f"still running after {timeout_s:g} s", self._tag)
                self.jobs.cancel()
                self.jobs.wait_idle(1.0)
                return

    def _resign(self) -> None:
        """Leave the handover record and delete the leader key in one transaction, so the standby that
        sees the delete also learns which slot comes next."""
        cfg = self.config
        handover = Handover(replica_id=cfg.replica_id, fencing_token=self.term.fencing_token,
                            last_slot=self.last_started_slot or 0, written_at_unix_s=self.clock.wall())
        try:
            if not self.backend.resign(cfg.leader_key, self.term.fencing_token, cfg.handover_key,
                                       handover.SerializeToString(), cfg.call_timeout_s):
                log.warning("resign refused: the leader key is no longer ours %s", self._tag)
        except BackendError as err:
            log.warning("resign failed %s: %s", self._tag, err)
