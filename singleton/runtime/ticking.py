"""The leader's tick loop over every job of the replica (mixed into Leadership).

Each job (a Track) has its own schedule, run record, slot numbering, claim-ahead, lateness limit, overlap and timeout.
The loop keeps a heap of the next moment each job needs attention (its claim point, ~0.25 s ahead, or its slot), so a
wake-up costs O(log N) for the jobs it serves and nothing for the others; the single every-second job wakes once for
its claim and once for its slot, as before. The lease and stop checks run at the top of every pass and again right
before every run of any job, so a paused process never runs anything on an expired lease. Claims made in the same
pass go to etcd together (runtime.runs.claim_together: one transaction for up to ~100 jobs).
"""
from __future__ import annotations

import heapq
import logging
import threading
from typing import TYPE_CHECKING

from singleton.core.errors import BackendError
from singleton.core.lease import StepDownReason
from singleton.core.records import Handover
from singleton.core.runs import CatchUp, plan_catch_up_for
from singleton.core.term import JobVerdict, job_deadline, job_verdict
from singleton.core.ticker import (CLAIM_AHEAD_S, MAX_LATENESS_S, SlotPlan, Verdict, check_due, first_schedule_plan,
                                   next_schedule_plan)
from singleton.runtime.jobs import TickContext
from singleton.runtime.pool import PoolFull
from singleton.runtime.runs import ClaimOutcome, Prepared, claim_together
from singleton.runtime.tracks import Track

if TYPE_CHECKING:
    from collections.abc import Callable

    from singleton.backends.abc import Backend
    from singleton.core.clock import Clock
    from singleton.core.config import Config
    from singleton.core.election import Election, Term
    from singleton.runtime.telemetry import Stats

log = logging.getLogger("singleton")

# Float sums on the monotonic clock land a hair off the instant they aim at; this much early counts as on time.
_EPS_S = 1e-6
# The loop wakes at least this often, so /healthz sees it beat even when every job's next slot is far off.
_MAX_WAIT_S = 1.0


def _handled_wall(plan: SlotPlan, wall: float, mono: float) -> float:
    """The instant the handled plan was due at, on the wall clock as it reads now (a step of it included), plus a
    tenth of a millisecond: float sums land a hair before an instant, and instants are >= 100 ms apart."""
    return wall + (plan.wake_at - mono) + 1e-4


class Ticker:
    """The tick loop, as methods of Leadership (which holds the term, the tracks and the clocks)."""

    config: Config
    backend: Backend
    clock: Clock
    election: Election
    term: Term
    stats: Stats
    tracks: list[Track]
    _wake: threading.Event
    _stop_reason: Callable[[], StepDownReason | None]
    _active: set[int]
    _run_deadline: float | None
    _drain_started: float | None
    drained_s: float
    last_started_slot: int | None
    last_tick_wall: float | None
    ticker_beat: float

    @property
    def _tag(self) -> str:
        raise NotImplementedError

    def _held(self, track: Track, slot: int, wall: float) -> str | None:
        """Why an operator keeps `slot` from running (paused, skip_next; runtime.control); None: it may run."""
        return None

    def _serve_triggers(self) -> StepDownReason | None:
        return None

    def _tick_until_step_down(self, handover_last_slot: int | None,
                              handover: Handover | None = None) -> StepDownReason:
        reason = self._load_records()
        if reason is not None:
            return reason
        reason = self._first_plans(handover_last_slot, handover)
        if reason is not None:
            return reason
        clock, keeper, cfg = self.clock, self.term.keeper, self.config
        heap = [(t.event_at(), t.version, t.index) for t in self.tracks]
        heapq.heapify(heap)
        while True:
            self._wake.clear()
            mono, wall = clock.monotonic(), clock.wall()
            self.ticker_beat = mono
            # The lease check runs right before every pass (and every run), so a process that was paused past its
            # lease (GC, SIGSTOP, VM freeze) steps down instead of running anything.
            reason = self._draining(self._stop_reason(), mono) or self.election.check(mono) or \
                self._check_runs(mono) or self._serve_triggers()
            if reason is not None:
                return reason
            ready: list[Track] = []
            while heap and heap[0][0] <= mono + _EPS_S:
                _, version, index = heapq.heappop(heap)
                track = self.tracks[index]
                if version == track.version:
                    ready.append(track)
            if not ready:
                wake_in = min(heap[0][0] - mono if heap else _MAX_WAIT_S, _MAX_WAIT_S,
                              keeper.remaining_s(mono) - cfg.min_remaining_ttl_s + 0.001)
                if self._run_deadline is not None:
                    wake_in = min(wake_in, self._run_deadline - mono + 0.001)
                if self._drain_started is not None:
                    wake_in = min(wake_in, 0.05)  # runs ending wake us too; this bounds a missed wake-up
                self._wake.wait(max(0.0, wake_in))
                continue
            try:
                reason = self._serve(ready, mono, wall)
            finally:
                for track in ready:
                    track.version += 1
                    heapq.heappush(heap, (track.event_at(), track.version, track.index))
            if reason is not None:
                return reason

    def _draining(self, stop: StepDownReason | None, mono: float) -> StepDownReason | None:
        """A graceful stop (shutdown, resign) hands over at the first moment no run is in flight, and the jobs keep
        their schedules until then: waiting for a slow run must not make the quick jobs miss their instants (the
        handover names each job's next slot, and a slot that passed while we waited would be lost). Bounded by the
        stop timeout; the step-down then cancels what still runs."""
        if stop is None or not stop.graceful:
            return stop
        if not any(t.runner.busy() for t in self.tracks):
            return stop
        if self._drain_started is None:
            self._drain_started = mono
            log.info("stopping (%s): waiting for the runs in flight, jobs keep their schedules meanwhile %s",
                     stop.value, self._tag)
        self.drained_s = mono - self._drain_started
        return stop if self.drained_s >= self.config.stop_timeout_s else None

    # --- the start of a term ---------------------------------------------------------------------------
    def _load_records(self) -> StepDownReason | None:
        """Named jobs' run records, read together at the start of the term (the legacy job's came with the
        campaign). Until they are read nothing can be claimed, so we retry while the lease allows."""
        named = [t for t in self.tracks if t.chain is not None and not t.legacy]
        if not named:
            return None
        while True:
            reason = self._stop_reason() or self.election.check(self.clock.monotonic())
            if reason is not None:
                return reason
            try:
                found = self.backend.get_many([t.chain.run_key for t in named if t.chain], self.config.call_timeout_s)
                break
            except BackendError as err:
                log.warning("could not read the jobs' run records %s: %s; retrying", self._tag, err)
                self._wake.wait(0.2)
        for track in named:
            assert track.chain is not None
            track.chain.load(found.get(track.chain.run_key))
        return None

    def _handover_next(self, track: Track, handover_last_slot: int | None,
                       handover: Handover | None) -> int | None:
        if track.legacy:
            return None if handover_last_slot is None else handover_last_slot + 1
        if handover is None or track.name not in handover.job_next_slots:
            return None
        return int(handover.job_next_slots[track.name])

    def _first_plans(self, handover_last_slot: int | None,
                     handover: Handover | None) -> StepDownReason | None:
        clock = self.clock
        for track in self.tracks:
            spec, chain = track.spec, track.chain
            nxt = self._handover_next(track, handover_last_slot, handover)
            # After a handover (the very delete that woke us) the predecessor started nothing from `nxt` on, even if
            # it had claimed that slot ahead before it stopped: follow the handover. Otherwise follow the record.
            record_slot = chain.last_slot if chain is not None and nxt is None else None
            track.plan = first_schedule_plan(spec.schedule, clock.wall(), clock.monotonic(), nxt, record_slot,
                                             spec.name, spec.jitter_s)
            log.log(logging.INFO if track.legacy else logging.DEBUG, "first slot %d%s %s", track.plan.slot,
                    track.tag, self._tag)
            if chain is not None and nxt is None:
                reason = self._catch_up(track, track.plan.slot)
                if reason is not None:
                    return reason
        if not self.tracks:
            log.info("leading with no jobs (gate only) %s", self._tag)
        elif len(self.tracks) > 1 or not self.tracks[0].legacy:
            log.info("leading %d job(s) %s", len(self.tracks), self._tag)
        return None

    def _catch_up(self, track: Track, first_slot: int) -> StepDownReason | None:
        """After a takeover that was not a handover: count (skip) or run once for (coalesce) the slots nobody
        claimed between the record and our first slot."""
        chain, spec = track.chain, track.spec
        assert chain is not None
        chain.unknown_outcome_of_predecessor()
        plan = plan_catch_up_for(spec.schedule, chain.last_slot, first_slot, CatchUp(spec.catch_up),
                                 spec.catch_up_window_s)
        if not plan.missed:
            return None
        log.warning("takeover: slots %d..%d (%d)%s were claimed by nobody; catch-up %s %s", plan.missed_from,
                    plan.missed_to, plan.missed, track.tag, spec.catch_up, self._tag)
        if plan.coalesce_from is None:
            self.stats.missed("takeover", plan.missed, track.label)
            return None
        self.stats.missed("beyond_window", plan.beyond_window, track.label)
        self.stats.missed("coalesced", plan.coalesced, track.label)
        reason = self._stop_reason() or self.election.check(self.clock.monotonic())
        if reason is not None:
            return reason
        outcome = self._claim(plan.missed_to, coalesced_from=plan.coalesce_from, track=track)
        if outcome is ClaimOutcome.REFUSED:
            return StepDownReason.CLAIM_REFUSED
        if outcome is ClaimOutcome.CLAIMED:
            self._start(track, plan.missed_to, spec.schedule.instant(plan.missed_to), None, self.clock.wall(),
                        coalesced=(plan.coalesce_from, plan.missed_to))
        return None

    # --- one pass over the jobs that need attention --------------------------------------------------
    def _serve(self, ready: list[Track], mono: float, wall: float) -> StepDownReason | None:
        clock = self.clock
        claims: list[tuple[Track, float]] = []  # (track, how long its claim may take)
        handled: list[Track] = []  # run, or skipped and counted: on to their next slot
        for track in sorted(ready, key=lambda t: t.plan.wake_at if t.plan else 0.0):
            plan, chain = track.plan, track.chain
            assert plan is not None
            unclaimed = chain is not None and chain.claim_of(plan.slot) is None
            at = plan.wake_at if 0 < plan.wake_at - mono <= _EPS_S else mono
            # A slot not yet due needs no lateness limit (for cron it costs a walk to the next fire time).
            limit = track.max_lateness_s(plan.slot) if at >= plan.wake_at else MAX_LATENESS_S
            due = check_due(plan, wall, at, limit)
            if due.clock_step_s and track.step_reported is not plan:
                track.step_reported = plan  # once per step, not on every wake-up of the same wait
                log.warning("wall clock stepped by %+.3f s %s; slots keep their order", due.clock_step_s, self._tag)
            if due.verdict is Verdict.WAIT:
                # The claim is made ahead of the slot, so the job still starts on time. Whether the previous run
                # still goes is decided at that moment, not when the wait is planned (just after starting that
                # run, it always does): a run still going then is claimed late, if it ends in time.
                if unclaimed and track.claim_tried != plan.slot and due.wait_s <= CLAIM_AHEAD_S + _EPS_S:
                    track.claim_tried = plan.slot
                    if not track.full() and self._held(track, plan.slot, wall) is None:
                        claims.append((track, due.wait_s + limit))
                continue
            if due.verdict is Verdict.TOO_LATE:
                self.stats.tick("late", job=track.label)
                self._not_run(track, plan.slot, "late")
                log.warning("slot %d%s skipped: woke %.3f s late %s", plan.slot, track.tag, due.lateness_s, self._tag)
            elif track.full():
                self.stats.tick("skipped", job=track.label)
                self._not_run(track, plan.slot, "overrun")
                log.warning("slot %d%s skipped: the previous run is still going %s", plan.slot, track.tag, self._tag)
            elif (held := self._held(track, plan.slot, wall)) is not None:
                self._not_run(track, plan.slot, held)  # an operator's pause or skip-next (claimed, or not at all)
                log.log(logging.DEBUG if held == "paused" else logging.INFO, "slot %d%s not run: %s %s", plan.slot,
                        track.tag, held.replace("_", "-"), self._tag)
            elif unclaimed:
                # Not claimed ahead (the job was still running then, or etcd did not answer): claim now; the next
                # pass checks the lease and the time again before running it.
                claims.append((track, limit - due.lateness_s))
                continue
            else:
                now = clock.monotonic()
                reason = self._draining(self._stop_reason(), now) or self.election.check(now)
                if reason is not None:
                    return reason
                self._start(track, plan.slot, plan.scheduled_at, due.lateness_s, wall)
            handled.append(track)
        # The next plans after every start of this pass: for cron each is a walk to the next fire time, and the runs
        # due now should not wait for the others' arithmetic.
        for track in handled:
            assert track.plan is not None
            track.plan = next_schedule_plan(track.spec.schedule, track.plan.slot, clock.wall(), clock.monotonic(),
                                            track.name, track.spec.jitter_s,
                                            _handled_wall(track.plan, clock.wall(), clock.monotonic()))
        return self._claim_now_or_ahead(claims) if claims else None

    def _claim_now_or_ahead(self, claims: list[tuple[Track, float]]) -> StepDownReason | None:
        clock = self.clock
        if len(claims) == 1:
            track, timeout_s = claims[0]
            assert track.plan is not None
            outcomes = [self._claim(track.plan.slot, timeout_s=timeout_s, track=track)]
        else:
            outcomes = self._claim_together(claims)
        for (track, _), outcome in zip(claims, outcomes):
            if outcome is ClaimOutcome.REFUSED:
                return StepDownReason.CLAIM_REFUSED
            plan = track.plan
            assert plan is not None
            if outcome is ClaimOutcome.FAILED and clock.monotonic() >= plan.wake_at:
                # A claim made at the slot itself that etcd did not answer: the slot is not run.
                self.stats.tick("unclaimed", job=track.label)
                self.stats.missed("unclaimed", 1, track.label)
                track.plan = next_schedule_plan(track.spec.schedule, plan.slot, clock.wall(), clock.monotonic(),
                                                track.name, track.spec.jitter_s,
                                                _handled_wall(plan, clock.wall(), clock.monotonic()))
        return None

    def _claim_together(self, claims: list[tuple[Track, float]]) -> list[ClaimOutcome]:
        timeout_s = max(0.05, min(self.config.call_timeout_s, min(t for _, t in claims)))
        outcomes: list[ClaimOutcome | None] = []
        prepared: list[Prepared] = []
        for track, _ in claims:
            assert track.chain is not None and track.plan is not None
            ready = track.chain.prepare(track.plan.slot, 0, timeout_s)
            if isinstance(ready, ClaimOutcome):
                outcomes.append(ready)
            else:
                outcomes.append(None)
                prepared.append(ready)
        results = iter(claim_together(self.backend, self.config.leader_key, self.term.fencing_token, prepared,
                                      timeout_s))
        final = [o if o is not None else next(results) for o in outcomes]
        if ClaimOutcome.REFUSED in final:
            log.warning("claim of %d jobs' slots refused: the term or a run record is no longer ours %s",
                        len(claims), self._tag)
        return final

    def _claim(self, slot: int, coalesced_from: int = 0, timeout_s: float | None = None,
               track: Track | None = None) -> ClaimOutcome:
        chain = (track or self.tracks[0]).chain
        assert chain is not None
        outcome = chain.claim(slot, coalesced_from, timeout_s)
        if outcome is ClaimOutcome.REFUSED:
            log.warning("claim of slot %d%s refused: the term or the run record is no longer ours %s", slot,
                        track.tag if track else "", self._tag)
        return outcome

    def _not_run(self, track: Track, slot: int, why: str) -> None:
        self.stats.missed(why, 1, track.label)
        if track.chain is not None and track.chain.claim_of(slot) is not None:
            track.chain.not_run(slot, "skipped" if why == "overrun" else why)

    def _start(self, track: Track, slot: int, scheduled_at: float, lateness_s: float | None,
               wall: float, coalesced: tuple[int, int] | None = None) -> None:
        cfg, chain = self.config, track.chain
        ctx = TickContext(self.term.fencing_token, slot, scheduled_at, cfg.replica_id, threading.Event(),
                          self.backend, cfg.leader_key, cfg.call_timeout_s, lateness_s=lateness_s or 0.0,
                          _claim=chain.claim_of(slot) if chain else None, coalesced_slots=coalesced, job=track.name)
        try:
            track.runner.start(ctx)
        except PoolFull:
            self.stats.tick("skipped", job=track.label)
            self._not_run(track, slot, "pool_full")
            log.warning("slot %d%s skipped: every worker is busy (%d; --workers) %s", slot, track.tag,
                        self.config.workers, self._tag)
            return
        track.last_started_slot = self.last_started_slot = slot
        self.last_tick_wall = wall
        self._active.add(track.index)
        self.stats.tick("run", lateness_s, job=track.label)

    def _check_runs(self, now: float) -> StepDownReason | None:
        """Cancel runs past their job's timeout; a run that ignores its cancel for the grace period ends the term.
        Looks only at jobs with runs in flight; remembers the next moment a verdict can change."""
        grace = self.config.job_cancel_grace_s
        self._run_deadline = None
        for index in list(self._active):
            track = self.tracks[index]
            runs = track.runs()
            if not runs:
                self._active.discard(index)
                continue
            for run in runs:
                verdict = job_verdict(run, now, track.spec.timeout_s, grace)
                if verdict is JobVerdict.HUNG:
                    return StepDownReason.JOB_HUNG
                if verdict is JobVerdict.CANCEL:
                    log.warning("slot %d%s ran past its timeout of %g s: cancelling it %s", run.slot, track.tag,
                                track.spec.timeout_s, self._tag)
                    self.stats.tick("timed_out", job=track.label)
                    track.cancel(run.slot)
                    run = type(run)(run.slot, run.started_at, now)
                deadline = job_deadline(run, track.spec.timeout_s, grace)
                if deadline is not None and (self._run_deadline is None or deadline < self._run_deadline):
                    self._run_deadline = deadline
        return None
