"""What a leader costs etcd, counted at each replica's own backend against a real etcd: a leader's death wakes O(1)
campaigns (not one per standby), and a leader learns about its key from a watch, not a read per renewal."""
from __future__ import annotations

import threading
from collections import Counter
from typing import Any

import pytest

from singleton import Config, Singleton, StepDownReason
from singleton.backends.abc import CampaignResult, KeyValue, Lease
from singleton.backends.etcd import EtcdBackend
from singleton.core.config import SettingError
from singleton.core.stagger import stagger_s
from singleton.core.timings import FAST
from singleton.dev.embedded import EtcdCluster
from singleton.runtime.keywatch import Change, follow_key
from singleton.testing.recorder import wait_for


class CountingBackend(EtcdBackend):
    """The real etcd client, counting the calls an election makes (and the leader key's reads)."""

    def __init__(self, *args: Any, leader_key: str = "", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.calls: Counter[str] = Counter()
        self.leader_key = leader_key
        self._count_lock = threading.Lock()

    def _count(self, what: str) -> None:
        with self._count_lock:
            self.calls[what] += 1

    def grant_lease(self, ttl_s: int, timeout_s: float) -> Lease:
        self._count("grant")
        return super().grant_lease(ttl_s, timeout_s)

    def campaign(self, key: str, value: bytes, lease_id: int, timeout_s: float,
                 also_read: tuple[str, ...] = ()) -> CampaignResult:
        self._count("campaign")
        return super().campaign(key, value, lease_id, timeout_s, also_read)

    def get(self, key: str, timeout_s: float) -> tuple[KeyValue | None, int]:
        if key == self.leader_key:
            self._count("get leader key")
        return super().get(key, timeout_s)


def replica(etcd: EtcdCluster, name: str, replica_id: str, **overrides: Any) -> Singleton:
    config = Config(endpoints=etcd.endpoints, name=name, replica_id=replica_id,  # type: ignore[arg-type]
                    **{**FAST.config_kwargs(), **overrides})
    backend = CountingBackend.from_config(config, leader_key=config.leader_key)
    return Singleton(config, lambda ctx: None, backend=backend)


def calls(s: Singleton, what: str) -> int:
    backend = s.backend
    assert isinstance(backend, CountingBackend)
    return backend.calls[what]


def leader_of(replicas: list[Singleton]) -> Singleton | None:
    leaders = [s for s in replicas if s.is_leader]
    return leaders[0] if len(leaders) == 1 else None


def test_a_leaders_death_wakes_a_bounded_number_of_campaigns(etcd: EtcdCluster, name: str) -> None:
    # Fast failover off: a crash is simulated by revoking the leader's lease from outside (as its expiry would).
    # The turns spread over 0.5 s, not the default 0.15: six replicas in one process on a loaded machine take up to
    # ~0.1 s from a turn to the put that the others see, and only the turns within that of the first campaign.
    stagger_max_s = 0.5
    replicas = [replica(etcd, name, f"r{i}", fast_failover=False, campaign_stagger_max_s=stagger_max_s)
                for i in range(6)]
    outside = EtcdBackend(etcd.endpoints)
    per_vacancy: list[int] = []
    try:
        for s in replicas:
            s.start()
        wait_for(lambda: leader_of(replicas) is not None and all(
            s.is_leader or (s.status().leader_id and s.role.value == "follower") for s in replicas),
            15, "one leader and five standbys following it")
        for round_ in range(6):
            old = leader_of(replicas)
            assert old is not None
            standbys = [s for s in replicas if s is not old]
            before = sum(calls(s, "grant") for s in standbys)
            if round_ % 2 == 0:  # a crash: the lease is gone, etcd deletes the key
                term = old.election.term
                assert term is not None
                outside.revoke_lease(term.keeper.lease_id, 2.0)
            else:  # a graceful handover
                old.resign()
            wait_for(lambda: leader_of(replicas) not in (None, old), 10, "a new leader")
            new = leader_of(replicas)
            assert new is not None
            # Every standby follows the new leader again (a late campaigner has lost by now, or never ran).
            wait_for(lambda: all(s.status().leader_id == new.replica_id for s in standbys if s is not new),
                     10, "the standbys to follow the new leader")
            per_vacancy.append(sum(calls(s, "grant") for s in standbys) - before)
            wait_for(lambda: old.role.value == "follower" and old.status().leader_id == new.replica_id,
                     10, "the old leader to stand by")
    finally:
        for s in replicas:
            s.stop()
        outside.close()
    # Before staggering: 5 campaigns per vacancy (every standby). Now one, or two when a turn came before the
    # first one's put reached it.
    print("grants per vacancy:", per_vacancy)
    assert sum(per_vacancy) / len(per_vacancy) <= 2.5, per_vacancy


def test_a_leader_reads_its_key_on_no_renewal_and_still_learns_of_its_deletion_at_once(etcd: EtcdCluster,
                                                                                     name: str) -> None:
    # Renewals 2 s apart: a step-down well within that came from the watch, not from a renewal.
    leader = replica(etcd, name, "a", lease_ttl_s=6, keepalive_interval_s=2.0, min_remaining_ttl_s=1.0)
    outside = EtcdBackend(etcd.endpoints)
    reasons: list[StepDownReason] = []
    leader.on_stepped_down(reasons.append)
    try:
        leader.start()
        wait_for(lambda: leader.is_leader, 5, "a to lead")
        token = leader.fencing_token
        reads = calls(leader, "get leader key")
        threading.Event().wait(2 * leader.config.keepalive_interval_s + 0.5)  # two renewals at least
        assert leader.is_leader and leader.fencing_token == token
        assert calls(leader, "get leader key") == reads, "the leader re-read its key after a renewal"
        # An operator deletes the key behind its back: the watch ends the term, no renewal needed.
        kv, _ = outside.get(leader.config.leader_key, 2.0)
        assert kv is not None and kv.create_revision == token
        outside.guarded_delete(leader.config.leader_key, token, leader.config.leader_key, 2.0)
        wait_for(lambda: reasons, 0.9 * leader.config.keepalive_interval_s, "the step-down")
        assert reasons[0] is StepDownReason.LEADERSHIP_LOST
    finally:
        leader.stop()
        outside.close()


@pytest.mark.parametrize("stagger_max_s", [0.15, 0.5])
def test_turns_are_fixed_per_vacancy_spread_over_the_range_and_change_between_vacancies(stagger_max_s: float) -> None:
    ids = [f"replica-{i}" for i in range(200)]
    turns = [stagger_s(r, 1234, stagger_max_s) for r in ids]
    assert turns == [stagger_s(r, 1234, stagger_max_s) for r in ids]  # every standby computes its own
    assert all(0 <= t < stagger_max_s for t in turns)
    assert len(set(turns)) == len(turns)
    # Uniform: each tenth of the range holds about a tenth of the turns.
    tenths = Counter(int(t / stagger_max_s * 10) for t in turns)
    assert all(8 <= tenths[i] <= 32 for i in range(10)), tenths
    # Another vacancy, another order: no replica is always first.
    first = {min(ids[:5], key=lambda r, v=v: stagger_s(r, v, stagger_max_s)) for v in range(100, 140)}
    assert len(first) == 5
    assert stagger_s("a", 1, 0.0) == 0.0  # off: everyone at once, as before


def test_the_stagger_is_a_checked_setting() -> None:
    Config(endpoints="http://127.0.0.1:2379", name="x", campaign_stagger_max_s=0.0)
    for bad in (-0.1, 0.6):
        with pytest.raises(SettingError, match="campaign_stagger_max_s"):
            Config(endpoints="http://127.0.0.1:2379", name="x", campaign_stagger_max_s=bad)


def test_the_key_watch_outlives_compaction_by_reading_the_key_and_going_on(etcd: EtcdCluster, name: str) -> None:
    backend = EtcdBackend(etcd.endpoints)
    key, stop = f"/{name}/leader", threading.Event()
    changes: list[Change] = []
    try:
        lease = backend.grant_lease(10, 2.0)
        result = backend.campaign(key, b"x", lease.lease_id, 2.0)
        start = result.revision  # the watch is to start here, but this history is compacted before it opens
        backend.compact(backend.get(key, 2.0)[1], 2.0)
        thread = threading.Thread(target=follow_key, args=(backend, key, start - 1, stop,
                                                           lambda c: changes.append(c) or c.kv is None, 2.0, "test"))
        thread.start()
        wait_for(lambda: changes, 5, "the re-read after compaction")
        assert changes[0].read and changes[0].kv is not None and changes[0].kv.create_revision == result.fencing_token
        backend.revoke_lease(lease.lease_id, 2.0)  # then the watch goes on from the read: the delete comes
        wait_for(lambda: len(changes) == 2, 5, "the delete")
        assert changes[1].kv is None and not changes[1].read
        thread.join(5)
        assert not thread.is_alive()  # on_change said done
    finally:
        stop.set()
        backend.close()
