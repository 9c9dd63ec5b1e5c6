"""Standing for election: campaign (grant a lease, one compare-and-swap transaction), and when lost, stand by on a
watch of the leader key until it is deleted, then wait our turn (core/stagger.py) still watching, so that one
standby campaigns rather than all. tenacity decides when to retry after etcd errors; this module does the calls
and the waiting."""
from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import tenacity

from singleton.backends.abc import Backend, CampaignResult, KeyValue
from singleton.core.clock import Clock
from singleton.core.config import Config
from singleton.core.election import Election, Term
from singleton.core.errors import BackendError
from singleton.core.lease import LeaseKeeper
from singleton.core.records import Handover, decode_handover, decode_leader, leader_record
from singleton.core.repeats import RepeatedFailures
from singleton.core.stagger import stagger_s
from singleton.runtime.keywatch import Change, KeyFollower
from singleton.runtime.sensing import Sensor
from singleton.runtime.telemetry import tracer

log = logging.getLogger("singleton")


@dataclass(frozen=True)
class Won:
    term: Term
    result: CampaignResult
    sent_at: float  # monotonic send time of the lease grant: the lease's local expiry counts from it
    handover: Handover | None  # the predecessor's handover, when it is the very delete that woke us
    vacant_for_s: float | None  # how long the key stood vacant before we won, when we saw it go

    @property
    def handover_last_slot(self) -> int | None:
        return self.handover.last_slot if self.handover is not None and self.handover.last_slot > 0 else None


class Campaigner:
    def __init__(self, config: Config, backend: Backend, clock: Clock, election: Election, stop: threading.Event,
                 see_leader: Callable[[KeyValue | None], None]) -> None:
        self.config, self.backend, self.clock, self.election = config, backend, clock, election
        self._stop = stop
        self._see_leader = see_leader  # keeps the replica's status current
        self.job_names: Callable[[], list[str]] = list  # the named jobs, published in the leader record
        self._vacancy_revision: int | None = None  # revision of the leader-key delete that ended our wait
        self._vacancy_seen_at: float | None = None  # monotonic time we saw it
        self.sensing: tuple[str, str] | None = None  # our listener's (address, nonce), for our leader record
        self.sensor: Sensor | None = None  # while standing by: the sensing of the current leader's death
        self._led = False  # our last campaign won: the next one follows the end of our own term
        where = ",".join(map(str, config.endpoints))
        self._failures = RepeatedFailures(log, f"etcd not usable at {where}", clock=clock.monotonic)

    def retrying(self) -> tenacity.Retrying:
        # tenacity decides when to try again; the stop event makes its sleep interruptible. The wait never
        # exceeds campaign_backoff_max_s (+ jitter), however long etcd is down: a standby campaigns within that
        # of etcd coming back. Only the log thins out (the first failure, then a line per 30 s).
        return tenacity.Retrying(
            retry=tenacity.retry_if_exception_type(BackendError),
            wait=tenacity.wait_exponential_jitter(multiplier=0.1, max=self.config.campaign_backoff_max_s, jitter=0.2),
            stop=tenacity.stop_when_event_set(self._stop),
            sleep=self._sleep,
            before_sleep=self._retry_logged,
            reraise=False,
        )

    def _retry_logged(self, state: tenacity.RetryCallState) -> None:
        err = state.outcome.exception() if state.outcome else None
        self._failures.failed(err or BackendError("?"), state.upcoming_sleep)

    def _sleep(self, seconds: float) -> None:
        self._stop.wait(seconds)  # a stop ends the back-off at once

    def until_decided(self) -> Won | None:
        """Campaign until we win, or are stopped (None). A lost campaign waits on the watch for a vacancy.

        Before a campaign that no vacancy of our watch called for (at start, after our own term), we read the key
        first: held, we stand by at once, without a lease grant, a transaction and a revoke."""
        if self._led:  # our own term just ended (a forced step-down): the standbys have the first turns
            self._led = False
            if self._stop.wait(self.config.campaign_stagger_max_s):
                return None
        look = True
        while not self._stop.is_set():
            if look and (held := self._held()) is not None:
                look = False
                self._wait_for_vacancy(held)
                continue
            look = False
            try:
                term, result, sent_at = self.retrying()(self.once)
            except tenacity.RetryError:
                return None
            self._failures.recovered()
            if term is not None:
                seen_at, self._vacancy_seen_at = self._vacancy_seen_at, None
                vacant_for = None if seen_at is None else self.clock.monotonic() - seen_at
                self._led = True
                return Won(term, result, sent_at, self._handover(result), vacant_for)
            self._wait_for_vacancy(result)
        return None

    def _held(self) -> CampaignResult | None:
        """The leader key as it stands, as a lost campaign would report it; None if vacant (or stopped)."""
        try:
            kv, revision = self.retrying()(self.backend.get, self.config.leader_key, self.config.call_timeout_s)
        except tenacity.RetryError:
            return None
        self._failures.recovered()
        self._see_leader(kv)
        return None if kv is None else CampaignResult(False, revision, kv, {})

    def once(self) -> tuple[Term | None, CampaignResult, float]:
        with tracer.start_as_current_span("singleton.campaign", attributes={"singleton.replica_id":
                                                                           self.config.replica_id}) as span:
            term, result, sent_at = self._attempt()
            span.set_attribute("singleton.won", term is not None)
            span.set_attribute("singleton.fencing_token", result.fencing_token)
        self._see_leader(result.leader)
        return term, result, sent_at

    def _attempt(self) -> tuple[Term | None, CampaignResult, float]:
        cfg = self.config
        self.election.campaign()
        sent_at = self.clock.monotonic()
        try:
            lease = self.backend.grant_lease(int(cfg.lease_ttl_s), cfg.call_timeout_s)
        except BackendError:
            self.election.campaign_failed()
            raise
        try:
            record = leader_record(cfg.replica_id, lease.lease_id, self.clock.wall(), *(self.sensing or ("", "")),
                                   jobs=self.job_names())
            result = self.backend.campaign(cfg.leader_key, record,
                                           lease.lease_id, cfg.call_timeout_s,
                                           also_read=(cfg.handover_key, cfg.run_key))
        except BackendError:
            self._revoke_quietly(lease.lease_id)  # outcome unknown: revoking also removes our key if written
            self.election.campaign_failed()
            raise
        if result.won:
            keeper = LeaseKeeper(lease.lease_id, lease.ttl_s, sent_at, min_remaining_ttl_s=cfg.min_remaining_ttl_s,
                                 max_failed_renewals=cfg.max_failed_renewals)
            return self.election.won(result.fencing_token, keeper), result, sent_at
        self._revoke_quietly(lease.lease_id)  # a lost campaign must not leak its lease
        self.election.lost()
        return None, result, sent_at

    def _revoke_quietly(self, lease_id: int) -> None:
        try:
            self.backend.revoke_lease(lease_id, self.config.call_timeout_s)
        except BackendError as err:
            log.warning("could not revoke unused lease %x (it expires by itself): %s", lease_id, err)

    def _handover(self, result: CampaignResult) -> Handover | None:
        """The predecessor's handover, only if it is the very delete we were woken by."""
        kv = result.extra.get(self.config.handover_key)
        if kv is None or self._vacancy_revision is None or kv.mod_revision != self._vacancy_revision:
            return None
        return decode_handover(kv.value)

    def _warn_if_our_id(self, holder: KeyValue) -> None:
        record = decode_leader(holder.value)
        if record is not None and record.replica_id == self.config.replica_id:
            # Not us: our lease lost. Either another process has our id, or an earlier run of ours crashed and
            # its lease has not lapsed yet (a restarted pod keeps its name). We wait like any standby.
            log.warning("the leader record carries our id %r but not our lease (%x, host %s pid %d): another "
                        "replica runs with this id, or an earlier run of it crashed; give every replica its own id",
                        record.replica_id, holder.lease_id, record.host, record.pid)

    def _wait_for_vacancy(self, lost: CampaignResult) -> None:
        """Follow the leader key until it is deleted and our turn to campaign comes with nobody having taken it
        meanwhile (or we stop). No polling decides who leads."""
        self._vacancy_revision = None
        if lost.leader is None:
            return  # vanished between our transaction and now: campaign again at once
        log.info("standing by: token %d holds %s", lost.leader.create_revision, self.config.leader_key)
        self._warn_if_our_id(lost.leader)
        self._sense(lost.leader)
        follower = KeyFollower(self.backend, self.config.leader_key, lost.revision + 1, self._stop,
                               self.config.call_timeout_s, "the standby's watch of the leader key").start()
        try:
            self._stand_by(follower, lost.leader)
        finally:
            follower.close()
            self._sense(None)

    def _stand_by(self, follower: KeyFollower, leader: KeyValue) -> None:
        """Returns when we are to campaign (or stopped). On a vacancy we wait our turn (core/stagger.py) still
        watching: a put meanwhile means someone won, and we stand by again without a grant or a transaction."""
        cfg = self.config
        while (change := follower.next()) is not None:
            if change.kv is not None:
                leader = self._leader_put(change.kv, leader, change.read)
                continue
            if not change.read:
                log.info("leader key deleted at revision %d", change.revision)
                self._vacancy_revision = change.revision
            self._vacancy_seen_at = self.clock.monotonic()
            self._see_leader(None)
            turn_s = self._turn_s(leader)
            self._sense(None)  # the term is over: a sensor still waiting its turn to revoke stands down
            taken = self._taken_within(follower, turn_s)
            if self._stop.is_set():
                return
            if taken is None or taken.kv is None:
                log.info("campaigning%s", f" after our turn of {turn_s * 1000:.0f} ms" if turn_s else "")
                return
            log.info("leader key taken (token %d) while we waited our turn: standing by",
                     taken.kv.create_revision)
            self._vacancy_revision = self._vacancy_seen_at = None
            leader = self._leader_put(taken.kv, leader, taken.read)

    def _turn_s(self, leader: KeyValue) -> float:
        """How long to wait before campaigning for the vacancy `leader`'s end left."""
        cfg, sensor = self.config, self.sensor
        turn_s = stagger_s(cfg.replica_id, leader.create_revision, cfg.campaign_stagger_max_s)
        if sensor is None or not sensor.dead.is_set():
            return turn_s
        if sensor.revoking.is_set():
            return 0.0  # we sensed the death and revoked the lease: our turn has come (the sensors' order is this one)
        # Another standby sensed it first, revoked, and campaigns at once: it gets a whole stagger's lead.
        return cfg.campaign_stagger_max_s + turn_s

    @staticmethod
    def _taken_within(follower: KeyFollower, wait_s: float) -> Change | None:
        """The put of the leader key if one comes within `wait_s` (real time: etcd's own pace, not the clock's)."""
        deadline = time.monotonic() + wait_s
        while (left := deadline - time.monotonic()) > 0:
            try:
                change = follower.next(left)
            except queue.Empty:
                return None
            if change is None or change.kv is not None:
                return change  # stopped, or taken
        return None

    def _leader_put(self, kv: KeyValue, before: KeyValue, read: bool) -> KeyValue:
        self._see_leader(kv)
        self._sense(kv)
        if not read or kv.create_revision != before.create_revision:
            record = decode_leader(kv.value)
            log.info("leader changed: %s token %d", record.replica_id if record else "?", kv.create_revision)
        return kv

    def _sense(self, leader: KeyValue | None) -> None:
        """Sense the death of `leader`'s process (None: stop sensing). A sensed death revokes its lease, which
        deletes the key: the watch below sees that as any vacancy (not a handover: no handover record)."""
        if self.sensor is not None:
            if leader is not None and self.sensor.lease_id == leader.lease_id:
                return  # the same term
            self.sensor.stop()
            self.sensor = None
        record = decode_leader(leader.value) if leader is not None and self.config.fast_failover else None
        if (leader is None or record is None or not record.sense_address or record.lease_id != leader.lease_id
                or (self.sensing is not None and record.sense_nonce == self.sensing[1])):
            return  # off here, a leader that offers no sensing (off there, an older version), or our own record
        try:
            turn_s = stagger_s(self.config.replica_id, leader.create_revision, self.config.campaign_stagger_max_s)
            self.sensor = Sensor(record.sense_address, record.sense_nonce, leader.lease_id, self.backend,
                                 self.clock, self.config.call_timeout_s, record.replica_id,
                                 self.config.leader_key, turn_s=turn_s).start()
        except ValueError as err:
            log.warning("not sensing leader %s: %s", record.replica_id, err)
