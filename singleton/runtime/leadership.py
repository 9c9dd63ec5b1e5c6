"""One leadership term: the keepalive thread, the tick loop over every job (runtime.ticking), and the step-down.

The tick loop runs on the thread that won; the keepalive runs on its own thread and only records into the
LeaseKeeper, which the loop consults before every run. Neither waits on a job, nor on a user callback.
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
from singleton.core.election import Election, Role, Term
from singleton.core.errors import BackendError, WatchCompacted
from singleton.core.lease import StepDownReason
from singleton.core.records import Handover
from singleton.core.term import Act, StepDown
from singleton.core.runs import handover_skew_s, record_skew_lower_bound_s, SKEW_WARNING_S
from singleton.runtime.control import JobControls
from singleton.runtime.jobs import TickContext
from singleton.runtime.keywatch import Change, follow_key
from singleton.runtime.runs import MAX_TXN_OPS, RunChain
from singleton.runtime.telemetry import Stats
from singleton.runtime.ticking import Ticker
from singleton.runtime.tracks import AllJobs, Runner, Track, legacy_spec

log = logging.getLogger("singleton")


@dataclass
class TermOutcome:
    reason: StepDownReason
    last_started_slot: int | None
    job_left_running: bool = False  # a job ignored its cancel: the lease was left to run out


class Leadership(Ticker):
    """`jobs` + `chain`: one legacy every-second job (its policies from the Config). `tracks`: any number of jobs,
    each with its own runner and run record; `jobs` and `chain` are then ignored."""

    def __init__(self, config: Config, backend: Backend, clock: Clock, election: Election, term: Term,
                 jobs: Runner | None, stats: Stats, wake: threading.Event,
                 stop_reason: Callable[[], StepDownReason | None],
                 on_step_down: Callable[[StepDownReason], None] = lambda reason: None,
                 chain: RunChain | None = None, *, tracks: list[Track] | None = None,
                 shared_lease: bool = False, successor: Callable[[], str] = str) -> None:
        self.config, self.backend, self.clock = config, backend, clock
        self.election, self.term, self.stats = election, term, stats
        # Sharding: the replica's one lease backs this term (runtime/shard/member.py renews it and wakes us); the
        # term then neither renews nor revokes it, and releases only its own key. `successor`: whom the handover
        # names (sharding's placement), "" for anyone.
        self.shared_lease = shared_lease
        self._successor = successor
        if tracks is None:
            assert jobs is not None
            tracks = [Track(legacy_spec(config), jobs, chain, legacy=True)]
        for index, track in enumerate(tracks):
            track.index = index
        self.tracks = tracks
        self.jobs = AllJobs(tracks)
        self._by_name = {t.name: t for t in tracks}
        self._active: set[int] = set()  # tracks with runs in flight
        self._run_deadline: float | None = None  # the next moment a run's timeout verdict can change
        self._drain_started: float | None = None  # a graceful stop waits for an idle moment, ticking meanwhile
        self.drained_s = 0.0
        self._wake = wake  # set by the keepalive after each renewal and by stop()/resign()
        self._stop_reason = stop_reason
        self._on_step_down = on_step_down  # posts to the listeners' thread; never blocks
        self._over = threading.Event()  # ends the keepalive and the resign watch
        self.last_started_slot: int | None = None
        self.last_tick_wall: float | None = None
        # Operators' pause/resume/skip-next/trigger (runtime.control): read at the start, followed by a watch.
        self.controls = JobControls(config, backend, clock, term.fencing_token, tracks, stats, wake, self._over)
        self.controls.on_change = self._control_changed  # a pause disarms a run armed ahead (runtime.handoff)
        # Heartbeats of the two loops, read by /healthz: a wedged loop stops beating.
        self.ticker_beat = self.keepalive_beat = clock.monotonic()

    @property
    def chain(self) -> RunChain | None:
        """The legacy job's run record (the first job's, with several)."""
        return self.tracks[0].chain if self.tracks else None

    def chain_for(self, job: str) -> RunChain | None:
        track = self._by_name.get(job)
        return track.chain if track is not None else self.chain if len(self.tracks) == 1 else None

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
                if ttl <= 0 and not self._over.is_set():  # after our own revoke at a clean stop: expected
                    log.warning("lease %x is gone at etcd %s", keeper.lease_id, self._tag)
            except BackendError as err:
                failures = keeper.renewal_failed()
                self.stats.renewal(None)
                log.warning("renewal failed (%d in a row) %s: %s", failures, self._tag, err)
            self._wake.set()
            self.keepalive_beat = self.clock.monotonic()
            next_at = sent_at + cfg.keepalive_interval_s

    def _check_key_still_ours(self, change: Change) -> bool:
        """Someone deleting or replacing the leader key (an operator, a resign) ends the term too: a watch brings
        it (runtime/keywatch.py), no read per renewal. True ends the watch."""
        if self._over.is_set():
            return True  # the term is over: our own revoke deletes the key
        if change.kv is not None and change.kv.create_revision == self.term.fencing_token:
            return False
        reason = self.election.step_down_reason
        if self.election.role is not Role.LEADER and reason is not None and reason.graceful:
            return True  # our own handover's delete: the graceful step-down goes on as planned
        lost = StepDownReason.LEADERSHIP_LOST
        if change.kv is None:  # a revoke of our lease deletes the key too: then say so (one read, on a delete only)
            try:
                if self.backend.lease_remaining_s(self.term.keeper.lease_id, self.config.call_timeout_s) < 0:
                    lost = StepDownReason.LEASE_LOST
            except BackendError:
                pass
        log.warning("the leader key was %s %s", "deleted" if change.kv is None else
                    f"taken by token {change.kv.create_revision}", self._tag)
        self.term.keeper.mark_lost(lost)
        self._wake.set()
        return True

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
        records = [t.chain.record for t in self.tracks if t.chain is not None and t.chain.record is not None]
        record = max(records, key=lambda r: r.claimed_at_unix_s) if records else None
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
            request_resign: Callable[[], None], handover: Handover | None = None) -> TermOutcome:
        keepalive = threading.Thread(target=self._keepalive_loop, args=(first_sent_at,), daemon=True,
                                     name="singleton-keepalive")
        if not self.shared_lease:  # sharding: the member renews; the replica's one watch of groups/ brings the
            # resign requests and any change of this group's key
            keepalive.start()
            threading.Thread(target=self._resign_watch, args=(won_revision + 1, request_resign), daemon=True,
                             name="singleton-resign-watch").start()
            threading.Thread(target=follow_key, args=(self.backend, self.config.leader_key, won_revision + 1,
                                                      self._over, self._check_key_still_ours,
                                                      self.config.call_timeout_s,
                                                      f"the leader's watch of its key {self._tag}"),
                             daemon=True, name="singleton-key-watch").start()
        threading.Thread(target=self.controls.follow, args=(won_revision + 1,), daemon=True,
                         name="singleton-control-watch").start()
        left_running = False
        try:
            try:
                reason = self.controls.load(self._term_check) or \
                    self._tick_until_step_down(handover_last_slot, handover)
            except Exception:  # noqa: BLE001 - the term must still end cleanly; the cause is logged
                log.exception("the tick loop failed %s; stepping down", self._tag)
                reason = StepDownReason.TICKER_FAILED
            left_running = self._step_down(reason)
        finally:
            self._over.set()  # the keepalive and resign watch end with the term, whatever happened
        if keepalive.is_alive():
            keepalive.join(timeout=self.config.renewal_deadline_s + 1.0)
        return TermOutcome(reason, self.last_started_slot, left_running)

    # --- job control (runtime.control) ---------------------------------------------------------------
    def _term_check(self) -> StepDownReason | None:
        return self._stop_reason() or self.election.check(self.clock.monotonic())

    def _held(self, track: Track, slot: int, wall: float) -> str | None:
        return self.controls.held(track, slot, wall)

    def _serve_triggers(self) -> StepDownReason | None:
        if self._drain_started is not None or self._stop_reason() is not None:
            return None  # stopping: the successor serves them
        return self.controls.serve_triggers(self._term_check, self._start_manual)

    def _start_manual(self, track: Track, ctx: TickContext) -> None:
        track.runner.start(ctx)  # PoolFull: JobControls records it
        self._active.add(track.index)
        self.stats.tick("run", 0.0, job=track.label)

    # --- stepping down -------------------------------------------------------------------------------
    def _step_down(self, reason: StepDownReason) -> bool:
        """Carry out core.term.StepDown; True when a job ignored its cancel and the lease was left to lapse."""
        cfg, keeper, clock = self.config, self.term.keeper, self.clock
        self.election.step_down(reason)
        self.stats.stepped_down(reason.value)
        running = self.jobs.running()
        # A graceful stop already let the runs in flight go on (and the other jobs tick) while it drained.
        plan = StepDown(reason, clock.monotonic(), stop_timeout_s=max(0.0, cfg.stop_timeout_s - self.drained_s),
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
                if self.shared_lease:
                    self._release_key()
                else:
                    self._revoke()
            elif step.act is Act.LET_LEASE_LAPSE:
                if self.shared_lease:  # the lease lives on for the other groups: release the key when it would lapse
                    timer = threading.Timer(keeper.remaining_s(now), self._release_key)
                    timer.daemon = True
                    timer.start()
                log.warning("the tick of slot %s ignored its cancel and still runs: not releasing lease %x, it "
                            "expires by itself in %.1f s; a standby cannot start beside it %s",
                            self.last_started_slot, keeper.lease_id, keeper.remaining_s(now), self._tag)

    def _release_key(self) -> None:
        """Sharding: end this group's term at etcd without touching the lease the other groups share (a delete
        guarded by our token: a successor's key is never touched). After a handover the key is gone already."""
        cfg = self.config
        try:
            self.backend.guarded_delete(cfg.leader_key, self.term.fencing_token, cfg.leader_key, cfg.call_timeout_s)
        except BackendError as err:
            log.warning("could not delete the leader key (it goes with the lease) %s: %s", self._tag, err)

    def _revoke(self) -> None:
        keeper = self.term.keeper
        try:
            self.backend.revoke_lease(keeper.lease_id, self.config.call_timeout_s)
        except BackendError as err:
            log.warning("could not revoke lease %x (it expires by itself) %s: %s", keeper.lease_id, self._tag, err)

    def _hand_over(self) -> None:
        """Leave the handover record and delete the leader key in one transaction, so the standby that
        sees the delete also learns which slot comes next (of every job)."""
        cfg = self.config
        legacy = next((t for t in self.tracks if t.legacy), None)
        handover = Handover(replica_id=cfg.replica_id, fencing_token=self.term.fencing_token,
                            last_slot=(legacy.last_started_slot if legacy else None) or 0,
                            written_at_unix_s=self.clock.wall(), successor_id=self._successor())
        for track in self.tracks:
            if not track.legacy and track.plan is not None:
                handover.job_next_slots[track.name] = track.plan.slot  # the first slot we did not start
        try:
            also: dict[str, bytes] = {}  # the last runs' history, in the same transaction
            for track in self.tracks:
                if track.chain is not None:
                    also.update(track.chain.final_puts())
            also = self._write_overflow(also)
            if not self.backend.resign(cfg.leader_key, self.term.fencing_token, cfg.handover_key,
                                       handover.SerializeToString(), cfg.call_timeout_s, also_put=also):
                log.warning("resign refused: the leader key is no longer ours %s", self._tag)
        except BackendError as err:
            log.warning("resign failed %s: %s", self._tag, err)

    def _write_overflow(self, puts: dict[str, bytes]) -> dict[str, bytes]:
        """History beyond what one transaction holds is written first (guarded by our token); the rest rides
        with the handover."""
        items = list(puts.items())
        room = MAX_TXN_OPS - 2
        while len(items) > room:
            chunk, items = dict(items[:room]), items[room:]
            self.backend.claim_all(self.config.leader_key, self.term.fencing_token, [], chunk,
                                   self.config.call_timeout_s)
        return dict(items)
