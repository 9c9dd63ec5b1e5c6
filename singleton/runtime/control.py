"""The leader's side of job control (pause, resume, skip-next, trigger; core.control), for one term.

On election the leader reads every job's control record before its first claim, then follows them through a prefix
watch (a thread of the term, like the resign watch). Every claim of a job compares that job's control record at the
revision the leader knows (runtime.runs.ControlFence): a pause that etcd acknowledged refuses every later claim of a
leader that has not yet seen it; such a refusal is told apart from the end of the term by one read, and the slot is
then judged again with the fresh record. Requests are consumed inside claims: skip-next by the claim of the slot it
skips, a trigger by the claim of its manual run (or refused, in a transaction guarded by the term, when the job's
overlap policy allows no run now), so a request is carried out once, however leadership changes.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING

from singleton.core.control import (ControlState, consume_skip, control_key, control_prefix, event_key, job_of_key,
                                    settle_trigger)
from singleton.core.errors import BackendError, WatchCompacted
from singleton.core.lease import StepDownReason
from singleton.runtime.jobs import TickContext
from singleton.runtime.pool import PoolFull
from singleton.runtime.runs import ClaimOutcome, ControlFence
from singleton.runtime.tracks import Track

if TYPE_CHECKING:
    from collections.abc import Callable

    from singleton.backends.abc import Backend
    from singleton.core.clock import Clock
    from singleton.core.config import Config
    from singleton.runtime.telemetry import Stats

log = logging.getLogger("singleton")

_RECHECK_S = 0.2  # one read tells a batch of refused claims apart; its verdict holds this long


def _job(track: Track) -> str:
    """The job's id in control keys: "" for the single job of `run --job` (legacy keys), else its name."""
    return "" if track.legacy else track.name


class JobControls:
    def __init__(self, config: Config, backend: Backend, clock: Clock, token: int, tracks: list[Track],
                 stats: Stats, wake: threading.Event, over: threading.Event) -> None:
        self.config, self.backend, self.clock, self.token, self.stats = config, backend, clock, token, stats
        self.state = ControlState()
        self._tracks = tracks
        self._by_job = {_job(t): t for t in tracks}
        self._wake, self._over = wake, over
        self._recheck: tuple[float, str, bool] | None = None  # (monotonic time, run key, verdict)
        # Told at once, on the watch's thread, which job's record changed: a run armed ahead is disarmed by a pause
        # before its worker wakes (runtime.handoff), not only when the tick loop next looks.
        self.on_change: Callable[[str], None] = lambda job: None
        for track in tracks:
            if track.chain is not None:
                track.chain.control = (lambda slot, consume, t=track: self._fence(t, slot, consume))

    @property
    def _tag(self) -> str:
        return f"replica={self.config.replica_id} token={self.token}"

    # --- reading and following the records ---------------------------------------------------------------
    def load(self, check: Callable[[], StepDownReason | None]) -> StepDownReason | None:
        """Read every control record before the first claim; retried while the lease allows (`check`)."""
        while True:
            reason = check()
            if reason is not None:
                return reason
            try:
                found = self.backend.get_prefix(control_prefix(self.config), self.config.call_timeout_s)
                break
            except BackendError as err:
                log.warning("could not read the jobs' control records %s: %s; retrying", self._tag, err)
                self._wake.wait(0.2)
        for kv in found:
            job = job_of_key(self.config, kv.key)
            if job is not None:
                self.state.apply(job, kv.mod_revision, kv.value)
        for track in self._tracks:
            if self.state.paused(_job(track), self.clock.wall()):
                log.info("job%s is paused %s", track.tag or " (single)", self._tag)
        return None

    def follow(self, start_revision: int) -> None:
        """The watch thread: every change of any control record, until the term ends; after a broken or compacted
        watch, the records are read again and the watch goes on from there."""
        revision = start_revision
        while not self._over.is_set():
            try:
                for event in self.backend.watch(control_prefix(self.config), revision, self._over, prefix=True):
                    revision = event.revision + 1
                    job = job_of_key(self.config, event.kv.key)
                    if job is not None and self.state.apply(job, event.revision,
                                                            None if event.deleted else event.kv.value):
                        self.on_change(job)
                        self._wake.set()  # a trigger is served, a pause judged, at once
                return
            except (WatchCompacted, BackendError) as err:
                log.info("control watch restarts %s: %s", self._tag, err)
                if self._over.wait(0.5):
                    return
            try:
                _, read_at = self.backend.get(self.config.leader_key, self.config.call_timeout_s)
                for kv in self.backend.get_prefix(control_prefix(self.config), self.config.call_timeout_s):
                    job = job_of_key(self.config, kv.key)
                    if job is not None and self.state.apply(job, kv.mod_revision, kv.value):
                        self.on_change(job)
                        self._wake.set()
                revision = read_at + 1
            except BackendError:
                continue

    # --- claims ----------------------------------------------------------------------------------------------
    def _fence(self, track: Track, slot: int, consume: bool) -> ControlFence:
        job, key = _job(track), control_key(self.config, _job(track))
        compare = (key, self.state.revision(job))
        moved = (lambda: self._control_moved(track))
        if not (consume and self.state.skip_pending(job)):
            return ControlFence(compare, control_moved=moved)
        control, event = consume_skip(self.state.control(job), slot, self.token, self.clock.wall())
        value = control.SerializeToString()
        puts = {key: value, event_key(self.config, job, event.seq): event.SerializeToString()}

        def claimed(revision: int) -> None:
            self.state.apply(job, revision, value)
            log.info("slot %d%s is skipped (skip-next by %s) %s", slot, track.tag, event.by or "?", self._tag)

        return ControlFence(compare, puts, claimed, moved)

    def _control_moved(self, track: Track) -> bool:
        """A claim was refused: True when our term and this job's run record still stand (so only its control record
        had moved; we adopt it). One read, reused for the other claims of the same refused batch."""
        assert track.chain is not None
        now = time.monotonic()
        if self._recheck is not None and now - self._recheck[0] < _RECHECK_S and self._recheck[1] == \
                track.chain.run_key:
            return self._recheck[2]
        key = control_key(self.config, _job(track))
        try:
            found = self.backend.get_many([self.config.leader_key, track.chain.run_key, key],
                                          min(0.5, self.config.call_timeout_s))
        except BackendError:
            return False  # cannot tell: the safe answer is the end of the term
        leader, run = found.get(self.config.leader_key), found.get(track.chain.run_key)
        stands = (leader is not None and leader.create_revision == self.token and
                  (run.mod_revision if run is not None else 0) == track.chain.revision)
        if stands:
            control = found.get(key)
            if control is not None:
                self.state.apply(_job(track), control.mod_revision, control.value)
            log.info("claim%s refused because its control record changed; judging again %s", track.tag, self._tag)
        self._recheck = (now, track.chain.run_key, stands)
        return stands

    def held(self, track: Track, slot: int, wall: float) -> str | None:
        """Why `slot` must not run: `skip_next` (claimed to consume a skip-next), `paused`; None: it may run."""
        if self.state.skipped(_job(track), slot):
            return "skip_next"
        if self.state.paused(_job(track), wall):
            return "paused"
        return None

    # --- triggers ----------------------------------------------------------------------------------------------
    def serve_triggers(self, check: Callable[[], StepDownReason | None],
                       start: Callable[[Track, TickContext], None]) -> StepDownReason | None:
        wall = self.clock.wall()
        for job in self.state.paused_jobs():  # a paused job claims nothing: its finished runs' history is written here
            track = self._by_job.get(job)
            if track is not None and track.chain is not None and self.state.paused(job, wall):
                track.chain.flush_history(self.config.call_timeout_s)
        if not self.state.any_triggers():
            return None
        for track in self._tracks:
            for asked in self.state.triggers(_job(track)):
                reason = check()
                if reason is not None:
                    return reason
                chain, plan = track.chain, track.plan
                if chain is None:
                    self._refuse(track, asked.id, "the job has no run record (--run-record off)")
                elif plan is not None and chain.claim_of(plan.slot) is not None:
                    break  # a slot claimed ahead starts first (within a quarter second): the trigger waits for it
                elif track.full():
                    self._refuse(track, asked.id, "the job is running and its overlap policy allows no other run")
                elif self._run(track, asked.id, asked.by, asked.reason, start) is ClaimOutcome.REFUSED:
                    return StepDownReason.CLAIM_REFUSED
        return None

    def _run(self, track: Track, trigger_id: str, by: str, reason: str,
             start: Callable[[Track, TickContext], None]) -> ClaimOutcome:
        chain, job, key = track.chain, _job(track), control_key(self.config, _job(track))
        assert chain is not None
        control, event = settle_trigger(self.state.control(job), trigger_id, "triggered", "", self.token,
                                        self.clock.wall(), run_seq=chain.last_seq + 1)
        value = control.SerializeToString()

        def claimed(revision: int) -> None:
            self.state.apply(job, revision, value)

        fence = ControlFence((key, self.state.revision(job)),
                             {key: value, event_key(self.config, job, event.seq): event.SerializeToString()},
                             claimed, lambda: self._control_moved(track))
        outcome, seq = chain.claim_manual(trigger_id, by, reason, fence)
        if outcome is ClaimOutcome.CLAIMED:
            log.info("manual run #%d%s (trigger %s by %s: %s) %s", seq, track.tag, trigger_id, by or "?",
                     reason or "-", self._tag)
            cfg = self.config
            ctx = TickContext(self.token, -seq, self.clock.wall(), cfg.replica_id, threading.Event(), self.backend,
                              cfg.leader_key, cfg.call_timeout_s, _claim=chain.claim_of(-seq), job=track.name)
            try:
                start(track, ctx)
            except PoolFull:
                self.stats.tick("skipped", job=track.label)
                chain.not_run(-seq, "pool_full")
                log.warning("manual run #%d%s not started: every worker is busy %s", seq, track.tag, self._tag)
        return outcome

    def _refuse(self, track: Track, trigger_id: str, why: str) -> None:
        job, key = _job(track), control_key(self.config, _job(track))
        control, event = settle_trigger(self.state.control(job), trigger_id, "trigger-refused", why, self.token,
                                        self.clock.wall())
        value = control.SerializeToString()
        try:
            revision = self.backend.claim_all(self.config.leader_key, self.token, [(key, self.state.revision(job))],
                                              {key: value, event_key(self.config, job, event.seq):
                                                  event.SerializeToString()}, self.config.call_timeout_s)
        except BackendError as err:
            log.warning("could not refuse trigger %s%s (retrying): %s %s", trigger_id, track.tag, err, self._tag)
            return
        if revision is not None:
            self.state.apply(job, revision, value)
            log.warning("trigger %s%s refused: %s %s", trigger_id, track.tag, why, self._tag)
