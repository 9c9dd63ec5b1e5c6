"""One leadership term: the keepalive thread, the every-second ticker, and the step-down.

The ticker runs on the thread that won; the keepalive runs on its own thread and only records into the
LeaseKeeper, which the ticker consults before every tick. Neither waits on the job, nor on a user callback.
What to do and in which order is decided in `core.term`; this module only carries it out.
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
from singleton.core.errors import BackendError, WatchCompacted
from singleton.core.lease import StepDownReason
from singleton.core.records import Handover
from singleton.core.term import Act, JobVerdict, StepDown, job_deadline, job_verdict
from singleton.core.runs import CatchUp, handover_skew_s, plan_catch_up, record_skew_lower_bound_s, SKEW_WARNING_S
from singleton.core.ticker import CLAIM_AHEAD_S, MAX_LATENESS_S, SlotPlan, Verdict, check_due, first_plan, plan_next
from singleton.runtime.jobs import JobRunner, TickContext
from singleton.runtime.runs import ClaimOutcome, RunChain
from singleton.runtime.telemetry import Stats

log = logging.getLogger("singleton")


@dataclass
class TermOutcome:
    reason: StepDownReason
    last_started_slot: int | None
    job_left_running: bool = False  # a job ignored its cancel: the lease was left to run out


class Leadership:
    def __init__(self, config: Config, backend: Backend, clock: Clock, election: Election, term: Term,
                 jobs: JobRunner, stats: Stats, wake: threading.Event,
                 stop_reason: Callable[[], StepDownReason | None],
                 on_step_down: Callable[[StepDownReason], None] = lambda reason: None,
                 chain: RunChain | None = None) -> None:
        self.config, self.backend, self.clock = config, backend, clock
        self.election, self.term, self.jobs, self.stats = election, term, jobs, stats
        self._wake = wake  # set by the keepalive after each renewal and by stop()/resign()
        self._stop_reason = stop_reason
        self._on_step_down = on_step_down  # posts to the listeners' thread; never blocks
        self._over = threading.Event()  # ends the keepalive and the resign watch
        self.chain = chain  # the run record; None when it is off
        self._claim_tried: int | None = None  # the slot an ahead-of-time claim was last tried for
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

    # --- resign requests ------------------------------------------------------------------------------
    def _asks_us_to_resign(self, value: bytes) -> bool:
        return value == str(self.term.fencing_token).encode()

    def _resign_watch(self, start_revision: int, request_resign: Callable[[], None]) -> None:
        """`singleton resign` writes our token to the resign key; a watch (not a poll) brings it here. The watch
        outlives compaction and broken streams: it re-reads the key and goes on from there."""
        key, revision = self.config.resign_key, start_revision
        while not self._over.is_set():
            try:
                for event in self.backend.watch(key, revision, self._over):
                    revision = event.revision + 1
                    if not event.deleted and self._asks_us_to_resign(event.kv.value):
                        log.info("resign requested through etcd %s", self._tag)
                        request_resign()
                        return
                return
            except WatchCompacted as err:
                log.info("resign watch restarts after compaction %s: %s", self._tag, err)
            except BackendError as err:
                log.info("resign watch restarts %s: %s", self._tag, err)
                if self._over.wait(0.5):
                    return
            try:  # what the lost history may have said is in the key as it stands now
                kv, read_at = self.backend.get(key, self.config.call_timeout_s)
            except BackendError:
                continue
            if kv is not None and self._asks_us_to_resign(kv.value):
                log.info("resign requested through etcd %s", self._tag)
                request_resign()
                return
            revision = read_at + 1

    # --- the term -------------------------------------------------------------------------------------
    def measure_skew(self, handover_written_at: float | None, vacant_for_s: float | None) -> None:
        """At a takeover: how far the previous leader's clock was from ours (log and gauge)."""
        wall = self.clock.wall()
        record = self.chain.record if self.chain else None
        if handover_written_at is not None and vacant_for_s is not None:
            skew, how = handover_skew_s(handover_written_at, wall - vacant_for_s), "measured at the handover"
        elif record is not None:
            skew, how = record_skew_lower_bound_s(record.claimed_at_unix_s, wall), "at least, from its last claim"
        else:
            return
        self.stats.skew(skew)
        if abs(skew) > SKEW_WARNING_S:
            log.warning("clock skew: the previous leader's wall clock was %+.2f s from ours (%s); slot numbers follow "
                        "the run record, not our clock %s", skew, how, self._tag)

    def run(self, first_sent_at: float, handover_last_slot: int | None, won_revision: int,
            request_resign: Callable[[], None]) -> TermOutcome:
        keepalive = threading.Thread(target=self._keepalive_loop, args=(first_sent_at,), daemon=True,
                                     name="singleton-keepalive")
        keepalive.start()
        threading.Thread(target=self._resign_watch, args=(won_revision + 1, request_resign), daemon=True,
                         name="singleton-resign-watch").start()
        left_running = False
        try:
            try:
                reason = self._tick_until_step_down(handover_last_slot)
            except Exception:  # noqa: BLE001 - the term must still end cleanly; the cause is logged
                log.exception("the tick loop failed %s; stepping down", self._tag)
                reason = StepDownReason.TICKER_FAILED
            left_running = self._step_down(reason)
        finally:
            self._over.set()  # the keepalive and resign watch end with the term, whatever happened
        keepalive.join(timeout=self.config.renewal_deadline_s + 1.0)
        return TermOutcome(reason, self.last_started_slot, left_running)

    def _tick_until_step_down(self, handover_last_slot: int | None) -> StepDownReason:
        cfg, clock, keeper = self.config, self.clock, self.term.keeper
        chain = self.chain
        # After a handover (the very delete that woke us) the predecessor ran nothing after its last slot, even if it
        # had claimed the next one ahead before it stopped: follow the handover. Otherwise follow the record.
        record_slot = chain.last_slot if chain is not None and handover_last_slot is None else None
        plan = first_plan(clock.wall(), clock.monotonic(), handover_last_slot, record_slot)
        log.info("first slot %d %s", plan.slot, self._tag)
        if chain is not None and handover_last_slot is None:
            reason = self._catch_up(chain, plan.slot)
            if reason is not None:
                return reason
        step_reported: SlotPlan | None = None
        while True:
            self._wake.clear()
            mono, wall = clock.monotonic(), clock.wall()
            self.ticker_beat = mono
            # The lease check runs right before every tick, so a process that was paused past its lease
            # (GC, SIGSTOP, VM freeze) steps down instead of ticking.
            reason = self._stop_reason() or self.election.check(mono) or self._check_job(mono)
            if reason is not None:
                return reason
            due = check_due(plan, wall, mono)
            if due.clock_step_s and step_reported is not plan:
                step_reported = plan  # once per step, not on every wake-up of the same wait
                log.warning("wall clock stepped by %+.3f s %s; slots keep their order", due.clock_step_s, self._tag)
            unclaimed = chain is not None and chain.claim_of(plan.slot) is None
            if due.verdict is Verdict.WAIT:
                # The claim is made ahead of the slot, so the job still starts on the whole second. Whether the
                # previous run still goes is decided at that moment, not when the wait is planned (just after
                # starting that run, it always does): a run still going then is claimed late, if it ends in time.
                claim_ahead = unclaimed and self._claim_tried != plan.slot
                if claim_ahead and due.wait_s <= CLAIM_AHEAD_S:
                    self._claim_tried = plan.slot
                    if not self.jobs.busy() and self._claim(plan.slot, timeout_s=due.wait_s + MAX_LATENESS_S) \
                            is ClaimOutcome.REFUSED:
                        return StepDownReason.CLAIM_REFUSED
                    continue
                # Wake for the claim or the slot, when the lease reaches its margin, or at the job's deadline.
                wake_in = min(due.wait_s - (CLAIM_AHEAD_S if claim_ahead else 0.0),
                              keeper.remaining_s(mono) - cfg.min_remaining_ttl_s + 0.001)
                deadline = job_deadline(self.jobs.running(), cfg.job_timeout_s, cfg.job_cancel_grace_s)
                if deadline is not None:
                    wake_in = min(wake_in, deadline - mono + 0.001)
                self._wake.wait(max(0.0, wake_in))
                continue
            if due.verdict is Verdict.TOO_LATE:
                self.stats.tick("late")
                self._not_run(plan.slot, "late")
                log.warning("slot %d skipped: woke %.3f s late %s", plan.slot, due.lateness_s, self._tag)
            elif self.jobs.busy():
                self.stats.tick("skipped")
                self._not_run(plan.slot, "overrun")
                log.warning("slot %d skipped: the previous run is still going %s", plan.slot, self._tag)
            elif unclaimed and chain is not None:
                # Not claimed ahead (the job was still running then, or etcd did not answer): claim now, then
                # the loop checks the lease and the time again before running it.
                outcome = self._claim(plan.slot, timeout_s=MAX_LATENESS_S - due.lateness_s)
                if outcome is ClaimOutcome.REFUSED:
                    return StepDownReason.CLAIM_REFUSED
                if outcome is ClaimOutcome.CLAIMED:
                    continue
                self.stats.tick("unclaimed")
                self.stats.missed("unclaimed", 1)
            else:
                self.jobs.start(TickContext(self.term.fencing_token, plan.slot, plan.scheduled_at,
                                            cfg.replica_id, threading.Event(), self.backend, cfg.leader_key,
                                            cfg.call_timeout_s, lateness_s=due.lateness_s,
                                            _claim=chain.claim_of(plan.slot) if chain else None))
                self.last_started_slot, self.last_tick_wall = plan.slot, wall
                self.stats.tick("run", due.lateness_s)
            plan = plan_next(plan.slot, clock.wall(), clock.monotonic())

    def _check_job(self, now: float) -> StepDownReason | None:
        """Cancel a job past its timeout; a job that ignores the cancel for the grace period ends the term."""
        cfg = self.config
        running = self.jobs.running()
        verdict = job_verdict(running, now, cfg.job_timeout_s, cfg.job_cancel_grace_s)
        if verdict is JobVerdict.CANCEL and running is not None:
            log.warning("slot %d ran past its timeout of %g s: cancelling it %s", running.slot, cfg.job_timeout_s,
                        self._tag)
            self.stats.tick("timed_out")
            self.jobs.cancel()
        elif verdict is JobVerdict.HUNG:
            return StepDownReason.JOB_HUNG
        return None

    # --- the run record -------------------------------------------------------------------------------
    def _claim(self, slot: int, coalesced_from: int = 0, timeout_s: float | None = None) -> ClaimOutcome:
        assert self.chain is not None
        outcome = self.chain.claim(slot, coalesced_from, timeout_s)
        if outcome is ClaimOutcome.REFUSED:
            log.warning("claim of slot %d refused: the term or the run record is no longer ours %s", slot, self._tag)
        return outcome

    def _not_run(self, slot: int, why: str) -> None:
        self.stats.missed(why, 1)
        if self.chain is not None and self.chain.claim_of(slot) is not None:
            self.chain.not_run(slot, "skipped" if why == "overrun" else why)

    def _catch_up(self, chain: RunChain, first_slot: int) -> StepDownReason | None:
        """After a takeover that was not a handover: count (skip) or run once for (coalesce) the slots nobody
        claimed between the record and our first slot."""
        cfg = self.config
        chain.unknown_outcome_of_predecessor()
        plan = plan_catch_up(chain.last_slot, first_slot, CatchUp(cfg.catch_up), cfg.catch_up_window_s)
        if not plan.missed:
            return None
        log.warning("takeover: slots %d..%d (%d) were claimed by nobody; catch-up %s %s", plan.missed_from,
                    plan.missed_to, plan.missed, cfg.catch_up, self._tag)
        if plan.coalesce_from is None:
            self.stats.missed("takeover", plan.missed)
            return None
        self.stats.missed("beyond_window", plan.beyond_window)
        self.stats.missed("coalesced", plan.coalesced)
        reason = self._stop_reason() or self.election.check(self.clock.monotonic())
        if reason is not None:
            return reason
        outcome = self._claim(plan.missed_to, coalesced_from=plan.coalesce_from)
        if outcome is ClaimOutcome.REFUSED:
            return StepDownReason.CLAIM_REFUSED
        if outcome is ClaimOutcome.CLAIMED:
            self.jobs.start(TickContext(self.term.fencing_token, plan.missed_to, float(plan.missed_to),
                                        cfg.replica_id, threading.Event(), self.backend, cfg.leader_key,
                                        cfg.call_timeout_s, _claim=chain.claim_of(plan.missed_to),
                                        coalesced_slots=(plan.coalesce_from, plan.missed_to)))
            self.last_started_slot, self.last_tick_wall = plan.missed_to, self.clock.wall()
            self.stats.tick("run")
        return None

    # --- stepping down -------------------------------------------------------------------------------
    def _step_down(self, reason: StepDownReason) -> bool:
        """Carry out core.term.StepDown; True when a job ignored its cancel and the lease was left to lapse."""
        cfg, keeper, clock = self.config, self.term.keeper, self.clock
        self.election.step_down(reason)
        self.stats.stepped_down(reason.value)
        running = self.jobs.running()
        plan = StepDown(reason, clock.monotonic(), stop_timeout_s=cfg.stop_timeout_s,
                        cancel_grace_s=cfg.job_cancel_grace_s,
                        job_cancelled_at=running.cancelled_at if running else None)
        log_at = logging.INFO if reason.graceful else logging.WARNING
        log.log(log_at, "stepping down (%s) %s remaining=%.2fs", reason.value, self._tag,
                keeper.remaining_s(clock.monotonic()))
        while True:
            now = clock.monotonic()
            trouble = keeper.step_down_reason(now)
            step = plan.next(now, job_busy=self.jobs.busy(), lease_ok=trouble is None)
            if step.act is Act.DONE:
                return plan.job_left_running
            if step.act is Act.CANCEL_JOB:
                why = trouble.value if trouble and reason.graceful else reason.value
                log.warning("cancelling the running tick (%s) %s", why, self._tag)
                if trouble is not None and reason.graceful:
                    self.election.step_down(trouble)  # the graceful stop became a forced one
                self.jobs.cancel()
            elif step.act is Act.NOTIFY:
                self._on_step_down(reason)
            elif step.act is Act.WAIT_FOR_JOB:
                # Short waits: a lease in trouble meanwhile must turn this into a forced step-down at once.
                self.jobs.wait_idle(min(step.wait_s, 0.05))
            elif step.act is Act.HAND_OVER:
                self._hand_over()
            elif step.act is Act.STOP_RENEWING:
                self._over.set()
            elif step.act is Act.REVOKE:
                self._revoke()
            elif step.act is Act.LET_LEASE_LAPSE:
                log.warning("the tick of slot %s ignored its cancel and still runs: not releasing lease %x, it "
                            "expires by itself in %.1f s; a standby cannot start beside it %s",
                            self.last_started_slot, keeper.lease_id, keeper.remaining_s(now), self._tag)

    def _revoke(self) -> None:
        keeper = self.term.keeper
        try:
            self.backend.revoke_lease(keeper.lease_id, self.config.call_timeout_s)
        except BackendError as err:
            log.warning("could not revoke lease %x (it expires by itself) %s: %s", keeper.lease_id, self._tag, err)

    def _hand_over(self) -> None:
        """Leave the handover record and delete the leader key in one transaction, so the standby that
        sees the delete also learns which slot comes next."""
        cfg = self.config
        handover = Handover(replica_id=cfg.replica_id, fencing_token=self.term.fencing_token,
                            last_slot=self.last_started_slot or 0, written_at_unix_s=self.clock.wall())
        try:
            also = self.chain.final_puts() if self.chain else {}  # the last runs' history, in the same transaction
            if not self.backend.resign(cfg.leader_key, self.term.fencing_token, cfg.handover_key,
                                       handover.SerializeToString(), cfg.call_timeout_s, also_put=also):
                log.warning("resign refused: the leader key is no longer ours %s", self._tag)
        except BackendError as err:
            log.warning("resign failed %s: %s", self._tag, err)
