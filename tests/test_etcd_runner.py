"""Singletons in-process against a real etcd: election, takeover through the watch, fencing, leaks, cut-offs."""
from __future__ import annotations

import logging
import time

import pytest

from singleton.testing.recorder import Recorder, make, wait_for
from singleton import BackendTimeout, Role, StepDownReason
from singleton.dev.embedded import EtcdCluster
from singleton.backends.etcd import EtcdBackend
from singleton.testing.proxy import CuttableProxy


def test_one_leader_and_a_graceful_stop_hands_over_the_next_second(etcd: EtcdCluster, name: str) -> None:
    rec = Recorder()
    a = make(etcd.endpoints, name, "a", rec)
    b = make(etcd.endpoints, name, "b", rec)
    a.start()
    wait_for(lambda: a.is_leader, 5, "a to lead")
    b.start()
    wait_for(lambda: len(rec.by("a")) >= 2, 5, "a to tick")
    assert b.role is Role.FOLLOWER and not rec.by("b")
    a.stop()
    wait_for(lambda: len(rec.by("b")) >= 2, 5, "b to take over")
    b.stop()
    rec.assert_safe()
    last_a, first_b = rec.by("a")[-1], rec.by("b")[0]
    assert first_b.slot == last_a.slot + 1, "graceful handover missed a second"
    assert first_b.token > last_a.token


def test_tokens_grow_across_terms(etcd: EtcdCluster, name: str) -> None:
    rec = Recorder()
    tokens = []
    for i in range(3):
        s = make(etcd.endpoints, name, f"r{i}", rec)
        s.start()
        wait_for(lambda: s.is_leader, 5, "leadership")
        tokens.append(s.fencing_token)
        s.stop()
    assert tokens == sorted(tokens) and len(set(tokens)) == 3


def test_a_tick_of_a_stale_leader_cannot_write(etcd: EtcdCluster, name: str) -> None:
    contexts = []
    a = make(etcd.endpoints, name, "a", contexts.append)
    a.start()
    wait_for(lambda: contexts, 5, "a tick")
    a.stop()
    b_contexts = []
    b = make(etcd.endpoints, name, "b", b_contexts.append)
    b.start()
    wait_for(lambda: b_contexts, 5, "b tick")
    try:
        stale, fresh = contexts[-1], b_contexts[-1]
        assert fresh.fencing_token > stale.fencing_token
        # `a`'s backend is closed; the write goes through b's (any client), only the token matters.
        stale_ctx = type(stale)(stale.fencing_token, stale.slot, stale.scheduled_at, "a", stale.cancel_event,
                                b.backend, b.config.leader_key)
        assert not stale_ctx.guarded_put(f"/out/{name}", "stale")
        assert fresh.guarded_put(f"/out/{name}", "fresh")
    finally:
        b.stop()


def test_lost_campaigns_leak_no_lease(etcd: EtcdCluster, name: str) -> None:
    rec = Recorder()
    leader = make(etcd.endpoints, name, "leader", rec)
    leader.start()
    wait_for(lambda: leader.is_leader, 5, "leadership")
    before = set(etcd.lease_ids())
    loser = make(etcd.endpoints, name, "loser", rec)
    for _ in range(40):
        term, result, _ = loser._campaigner.once()
        assert term is None and not result.won
    after = set(etcd.lease_ids())
    leader.stop()
    loser.backend.close()
    assert after == before, f"leaked leases: {after - before}"


def test_renewal_against_a_hung_member_fails_at_its_deadline(etcd: EtcdCluster) -> None:
    proxy = CuttableProxy("127.0.0.1", etcd.members[0].client_port)
    backend = EtcdBackend([_endpoint(proxy)])
    try:
        lease = backend.grant_lease(10, 2.0)
        assert backend.keep_alive_once(lease.lease_id, 1.0) == 10
        proxy.cut()
        started = time.monotonic()
        with pytest.raises(BackendTimeout):
            backend.keep_alive_once(lease.lease_id, 1.0)
        elapsed = time.monotonic() - started
        assert 0.95 <= elapsed < 1.6, elapsed
    finally:
        proxy.heal()
        backend.close()
        proxy.close()


def _endpoint(proxy: CuttableProxy):  # type: ignore[no-untyped-def]
    from singleton.core.config import parse_endpoint
    return parse_endpoint(proxy.endpoint)


def test_a_leader_cut_off_from_etcd_steps_down_before_its_lease_lapses(etcd: EtcdCluster, name: str) -> None:
    proxy = CuttableProxy("127.0.0.1", etcd.members[0].client_port)
    rec = Recorder()
    timings = {"lease_ttl_s": 5, "keepalive_interval_s": 1.0, "min_remaining_ttl_s": 1.0}
    a = make([proxy.endpoint], name, "a", rec, **timings)
    b = make(etcd.endpoints, name, "b", rec, **timings)
    stepped: list[tuple[StepDownReason, float]] = []
    a.on_stepped_down(lambda reason: stepped.append((reason, time.monotonic())))
    try:
        a.start()
        wait_for(lambda: a.is_leader, 5, "a to lead")
        b.start()
        wait_for(lambda: len(rec.by("a")) >= 2, 5, "a to tick")
        proxy.cut()
        cut_at = time.monotonic()
        term = a.election.term
        assert term is not None
        wait_for(lambda: stepped, 6, "a to step down")
        reason, at = stepped[0]
        # two renewals (1 s apart, 0.5 s deadline each) or the margin, whichever first; never past the lease
        assert reason in (StepDownReason.RENEWALS_FAILED, StepDownReason.LEASE_EXPIRING)
        assert at - cut_at <= 2 * 1.0 + 0.5 + 0.5
        assert at < term.keeper.expires_at
        wait_for(lambda: rec.by("b"), 8, "b to take over once a's lease lapsed")
        assert rec.by("b")[0].start_mono >= max(r.end_mono or r.start_mono for r in rec.by("a"))
    finally:
        proxy.heal()
        a.stop()
        b.stop()
        proxy.close()
    rec.assert_safe()


def test_etcd_down_at_start_retries_with_a_clear_message_then_wins(name: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="singleton")
    cluster = EtcdCluster(1)
    rec = Recorder()
    s = make(cluster.endpoints, name, "early", rec)
    try:
        s.start()
        time.sleep(1.5)
        assert not s.is_leader
        assert any("etcd not usable" in r.getMessage() and "retrying" in r.getMessage() for r in caplog.records)
        cluster.start()
        wait_for(lambda: rec.runs, 15, "a tick once etcd is up")
    finally:
        s.stop()
        cluster.stop()


def test_graceful_stop_keeps_the_lease_while_a_tick_longer_than_the_lease_finishes(etcd: EtcdCluster,
                                                                                   name: str) -> None:
    """Found by the chaos suite: the keepalive must go on while a graceful stop waits for the tick,
    or the lease lapses under a running tick and a standby starts ticking beside it."""
    rec = Recorder(hold_s=4.5)  # longer than the 3 s lease; the job stops early only if cancelled
    a = make(etcd.endpoints, name, "a", rec, stop_timeout_s=6.0)
    b = make(etcd.endpoints, name, "b", rec)
    try:
        a.start()
        wait_for(lambda: rec.by("a"), 5, "a's first tick")
        b.start()
        time.sleep(0.3)
        a.stop()
        tick = rec.by("a")[0]
        assert tick.end_mono is not None and tick.end_mono - tick.start_mono >= 4.4, "the tick was cut short"
        wait_for(lambda: rec.by("b"), 5, "b to tick after a's tick ended")
    finally:
        a.stop()
        b.stop()
    assert rec.by("b")[0].start_mono >= tick.end_mono, "b ticked while a's tick was still running"
    rec.assert_safe()
