"""The start of a term (each job's record and first slot, catch-up after a crash) and the claims of the run record,
for the tick loop of runtime/ticking.py (both mixed into Leadership)."""
from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING

from singleton.core.errors import BackendError
from singleton.core.lease import StepDownReason
from singleton.core.records import Handover
from singleton.core.runs import CatchUp, plan_catch_up_for
from singleton.core.ticker import CLAIM_AHEAD_S, SlotPlan, first_schedule_plan, next_schedule_plan
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


def handled_wall(plan: SlotPlan, wall: float, mono: float) -> float:
    """The instant the handled plan was due at, on the wall clock as it reads now (a step of it included), plus a
    tenth of a millisecond: float sums land a hair before an instant, and instants are >= 100 ms apart."""
    return wall + (plan.wake_at - mono) + 1e-4


class TermStart:
    """What the tick loop needs at the start of a term and to claim: methods of Leadership."""

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

    def _start(self, track: Track, slot: int, scheduled_at: float, lateness_s: float | None, wall: float,
               coalesced: tuple[int, int] | None = None) -> None:
        raise NotImplementedError  # runtime.ticking.Ticker

    def _arm(self, track: Track) -> None:
        raise NotImplementedError  # runtime.handoff.HandOff

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
            track.plan = self._first_plan(track, nxt, record_slot)
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

    def _first_plan(self, track: Track, nxt: int | None, record_slot: int | None) -> SlotPlan:
        spec, wall, mono = track.spec, self.clock.wall(), self.clock.monotonic()
        plan = first_schedule_plan(spec.schedule, wall, mono, nxt, record_slot, spec.name, spec.jitter_s)
        if record_slot is None:
            return plan
        # Not a handover: the slot just begun still runs if the record (read after the predecessor's key was gone)
        # shows nobody claimed it and its claim can be made in time: a key deleted at .9 of a second and won just
        # after the next one began must not cost that second. Not when a catch-up run starts now: it holds the job,
        # and the slot would only be skipped beside it.
        within = track.max_lateness_s(spec.schedule.last_at_or_before(wall)) - CLAIM_AHEAD_S
        now = first_schedule_plan(spec.schedule, wall, mono, nxt, record_slot, spec.name, spec.jitter_s, within)
        if now.slot == plan.slot or plan_catch_up_for(spec.schedule, record_slot, now.slot, CatchUp(spec.catch_up),
                                                      spec.catch_up_window_s).coalesce_from is not None:
            return plan
        return now

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
            if outcome is ClaimOutcome.CLAIMED:
                self._arm(track)  # a sync run goes to its worker now and starts itself at the instant
            elif outcome is ClaimOutcome.FAILED and clock.monotonic() >= plan.wake_at:
                # A claim made at the slot itself that etcd did not answer: the slot is not run.
                self.stats.tick("unclaimed", job=track.label)
                self.stats.missed("unclaimed", 1, track.label)
                track.plan = next_schedule_plan(track.spec.schedule, plan.slot, clock.wall(), clock.monotonic(),
                                                track.name, track.spec.jitter_s,
                                                handled_wall(plan, clock.wall(), clock.monotonic()))
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
