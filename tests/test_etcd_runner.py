"""Singletons in-process against a real etcd: election, takeover through the watch, fencing, leaks, cut-offs."""
from __future__ import annotations

import logging
import threading
import time

import pytest

from singleton.testing.recorder import Recorder, make, wait_for, wait_standing_by
from singleton import BackendTimeout, Role, StepDownReason
from singleton.dev.embedded import EtcdCluster
from singleton.backends.abc import WatchEvent
from singleton.backends.etcd import EtcdBackend
from singleton.testing.proxy import CuttableProxy


def test_one_leader_and_a_graceful_stop_hands_over_the_next_second(etcd: EtcdCluster, name: str) -> None:
    rec = Recorder()
    a = make(etcd.endpoints, name, "a", rec)
    b = make(etcd.endpoints, name, "b", rec)
    a.start()
    wait_for(lambda: a.is_leader, 5, "a to lead")
    b.start()
    wait_standing_by(b, "a", 10)  # the handover is taken at once only by a standby already following
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
    # Only new leases are leaks: one left by an earlier test on this shared etcd may lapse meanwhile.
    assert not after - before, f"leaked leases: {after - before}"


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
        # It waited for its deadline (a hang, not a refusal) and not for some longer timeout of the
        # client's; the 1 s beyond it is only for waking a thread on a busy machine.
        assert 0.95 <= elapsed < 1.0 + 1.0, elapsed
    finally:
        proxy.heal()
        try:
            backend.revoke_lease(lease.lease_id, 2.0)  # leave no lease on the shared etcd
        finally:
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
    # etcd's own word on when a's term ended, through a client of its own: the delete of the leader key.
    observer = EtcdBackend(etcd.endpoints)
    key_events: list[tuple[WatchEvent, float]] = []
    stop_watching = threading.Event()

    def observe(start_revision: int) -> None:
        for ev in observer.watch(a.config.leader_key, start_revision, stop_watching):
            key_events.append((ev, time.monotonic()))

    try:
        a.start()
        wait_for(lambda: a.is_leader, 5, "a to lead")
        term = a.election.term
        assert term is not None
        threading.Thread(target=observe, args=(term.fencing_token,), daemon=True).start()
        b.start()
        wait_standing_by(b, "a", 10)
        wait_for(lambda: len(rec.by("a")) >= 2, 5, "a to tick")
        wait_for(lambda: key_events, 5, "the observer to see a's key")
        proxy.cut()
        wait_for(lambda: stepped, 8, "a to step down")
        reason, stepped_at = stepped[0]
        # On its own lease rules (two failed renewals or the margin), not on learning the lease was gone.
        assert reason in (StepDownReason.RENEWALS_FAILED, StepDownReason.LEASE_EXPIRING)
        wait_for(lambda: any(ev.deleted for ev, _ in key_events), 10, "etcd to expire a's lease")
        expired_at = next(at for ev, at in key_events if ev.deleted)
        assert stepped_at < expired_at, "a was still leading when etcd expired its lease"
        assert all(r.end_mono is not None and r.end_mono < expired_at for r in rec.by("a")), "a ticked on a lapsed lease"
        wait_for(lambda: rec.by("b"), 8, "b to take over once a's lease lapsed")
        assert rec.by("b")[0].start_mono >= max(r.end_mono or r.start_mono for r in rec.by("a"))
    finally:
        stop_watching.set()
        proxy.heal()
        a.stop()
        b.stop()
        proxy.close()
        observer.close()
    rec.assert_safe()


def test_etcd_down_at_start_retries_with_a_clear_message_then_wins(name: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="singleton")
    cluster = EtcdCluster(1)
    rec = Recorder()
    s = make(cluster.endpoints, name, "early", rec)
    try:
        s.start()
        # Several failed tries (each bumps the repeat counter), waited for rather than slept for.
        wait_for(lambda: s._campaigner._failures._count >= 3, 15, "three failed tries")
        assert not s.is_leader and s.health() == []  # still running, waiting for etcd
        lines = [r.getMessage() for r in caplog.records if "etcd not usable" in r.getMessage()]
        # One short line (what, where, next try) for several failed tries, not one 350-character line per try.
        assert len(lines) == 1 and "retrying in" in lines[0] and "Connection refused" in lines[0], lines
        assert len(lines[0]) < 160 and cluster.endpoints_arg.split(",")[0] in lines[0], lines
        caplog.set_level(logging.INFO, logger="singleton")
        cluster.start()
        wait_for(lambda: rec.runs, 15, "a tick once etcd is up")
        assert any("fine again after" in r.getMessage() for r in caplog.records)
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
        wait_standing_by(b, "a", 4)  # well inside a's 4.5 s tick, so a.stop() waits on a running tick
        assert rec.by("a")[0].end_mono is None
        a.stop()
        tick = rec.by("a")[0]
        assert tick.end_mono is not None and tick.end_mono - tick.start_mono >= 4.4, "the tick was cut short"
        wait_for(lambda: rec.by("b"), 5, "b to tick after a's tick ended")
    finally:
        a.stop()
        b.stop()
    assert rec.by("b")[0].start_mono >= tick.end_mono, "b ticked while a's tick was still running"
    rec.assert_safe()


@pytest.mark.parametrize("round_", range(3))
def test_a_clean_stop_logs_no_warning(etcd: EtcdCluster, name: str, caplog: pytest.LogCaptureFixture,
                                      round_: int) -> None:
    """Found in the field: the resign watch, cut by the closing backend, warned `watch ... broke (Channel closed!)`
    after `replica ... stopped`. A watch told to stop, or on a closing backend, ends quietly."""
    caplog.set_level(logging.INFO, logger="singleton")
    rec_a, rec_b = Recorder(), Recorder()
    a, b = make(etcd.endpoints, name, "a", rec_a), make(etcd.endpoints, name, "b", rec_b)
    try:
        a.start()
        wait_for(lambda: rec_a.runs, 10, "a ticks")
        b.start()
        wait_for(lambda: b.role is Role.FOLLOWER, 10, "b stands by")
        a.stop()
        wait_for(lambda: rec_b.runs, 10, "b takes over")
    finally:
        a.stop()
        b.stop()
    stopped = [r for r in caplog.records if r.getMessage().startswith("replica ") and "stopped" in r.getMessage()]
    assert len(stopped) == 2  # both ran to the end of their stop
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert not warnings, warnings
