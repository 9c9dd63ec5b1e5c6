"""The leader's tick loop over every job of the replica (mixed into Leadership).

Each job (a Track) has its own schedule, run record, slot numbering, claim-ahead, lateness limit, overlap and timeout.
The loop keeps a heap of the next moment each job needs attention (its claim point, ~0.25 s ahead, or its slot), so a
wake-up costs O(log N) for the jobs it serves and nothing for the others; the single every-second job wakes once for
its claim and once just after its slot. A sync run is armed at its claim (runtime.handoff): its worker sleeps until
the instant and starts the job itself; the loop settles it afterwards. The lease and stop checks run at the top of
every pass and again right before every run of any job (for an armed run: on its worker, at the instant), so a
paused process never runs anything on an expired lease. Claims made in the same pass go to etcd together
(runtime.runs.claim_together: one transaction for up to ~100 jobs).
"""
from __future__ import annotations

import heapq
import logging
import threading

from singleton.core.lease import StepDownReason
from singleton.core.records import Handover
from singleton.core.term import JobVerdict, job_deadline, job_verdict
from singleton.core.ticker import CLAIM_AHEAD_S, MAX_LATENESS_S, Verdict, check_due, next_schedule_plan
from singleton.runtime.claiming import handled_wall
from singleton.runtime.handoff import HandOff
from singleton.runtime.jobs import TickContext
from singleton.runtime.pool import PoolFull
from singleton.runtime.tracks import Track

log = logging.getLogger("singleton")

# Float sums on the monotonic clock land a hair off the instant they aim at; this much early counts as on time.
_EPS_S = 1e-6
# The loop wakes at least this often, so /healthz sees it beat even when every job's next slot is far off.
_MAX_WAIT_S = 1.0


class Ticker(HandOff):
    """The tick loop, as methods of Leadership (which holds the term, the tracks and the clocks)."""

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
        try:
            return self._loop()
        finally:
            self._disarm_all()  # whatever ended the term: nothing armed starts after this

    def _loop(self) -> StepDownReason:
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
        self._disarm_unstarted()
        if not any(t.runner.busy() for t in self.tracks):
            return stop
        if self._drain_started is None:
            self._drain_started = mono
            log.info("stopping (%s): waiting for the runs in flight, jobs keep their schedules meanwhile %s",
                     stop.value, self._tag)
        self.drained_s = mono - self._drain_started
        return stop if self.drained_s >= self.config.stop_timeout_s else None

    # --- one pass over the jobs that need attention --------------------------------------------------
    def _serve(self, ready: list[Track], mono: float, wall: float) -> StepDownReason | None:
        clock = self.clock
        claims: list[tuple[Track, float]] = []  # (track, how long its claim may take)
        handled: list[Track] = []  # run, or skipped and counted: on to their next slot
        stop: StepDownReason | None = None
        for track in sorted(ready, key=lambda t: t.plan.wake_at if t.plan else 0.0):
            plan, chain = track.plan, track.chain
            assert plan is not None
            if track.armed is not None:
                settled = self._settle(track, mono, wall)
                if settled:
                    handled.append(track)  # its worker started it at the instant
                if settled is not False:
                    continue
                # Disarmed or refused before it started: judged below like any claimed slot.
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
                stop = self._draining(self._stop_reason(), now) or self.election.check(now)
                if stop is not None:
                    break  # the runs this pass started still move on (the handover names the slot after them)
                self._start(track, plan.slot, plan.scheduled_at, due.lateness_s, wall)
            handled.append(track)
        # The next plans after every start of this pass: for cron each is a walk to the next fire time, and the runs
        # due now should not wait for the others' arithmetic.
        for track in handled:
            assert track.plan is not None
            track.plan = next_schedule_plan(track.spec.schedule, track.plan.slot, clock.wall(), clock.monotonic(),
                                            track.name, track.spec.jitter_s,
                                            handled_wall(track.plan, clock.wall(), clock.monotonic()))
        if stop is not None:
            return stop
        return self._claim_now_or_ahead(claims) if claims else None

    def _context(self, track: Track, slot: int, scheduled_at: float, lateness_s: float | None,
                 coalesced: tuple[int, int] | None = None) -> TickContext:
        cfg, chain = self.config, track.chain
        return TickContext(self.term.fencing_token, slot, scheduled_at, cfg.replica_id, threading.Event(),
                           self.backend, cfg.leader_key, cfg.call_timeout_s, lateness_s=lateness_s or 0.0,
                           _claim=chain.claim_of(slot) if chain else None, coalesced_slots=coalesced, job=track.name)

    def _start(self, track: Track, slot: int, scheduled_at: float, lateness_s: float | None,
               wall: float, coalesced: tuple[int, int] | None = None) -> None:
        try:
            track.runner.start(self._context(track, slot, scheduled_at, lateness_s, coalesced))
        except PoolFull:
            self.stats.tick("skipped", job=track.label)
            self._not_run(track, slot, "pool_full")
            log.warning("slot %d%s skipped: every worker is busy (%d; --workers) %s", slot, track.tag,
                        self.config.workers, self._tag)
            return
        self._started(track, slot, lateness_s, wall)

    def _started(self, track: Track, slot: int, lateness_s: float | None, wall: float) -> None:
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
