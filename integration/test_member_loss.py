"""A 3-member etcd: the standby's watch and the leader's renewals survive losing the member they use."""
from __future__ import annotations

import threading
import time

import pytest
import tenacity

from singleton.testing.recorder import Recorder, make, wait_for

from singleton.backends.abc import WatchEvent
from singleton.core.errors import BackendError
from singleton.dev.embedded import EtcdCluster
from singleton.backends.etcd import EtcdBackend


@pytest.mark.parametrize("fault", ["kill", "pause"])
def test_standby_watch_survives_losing_its_member(etcd3: EtcdCluster, name: str, fault: str) -> None:
    key = f"/w/{name}/leader"
    writer = EtcdBackend([etcd3.members[1].endpoint, etcd3.members[2].endpoint])
    # The watcher is attached to member 0 first.
    watcher = EtcdBackend(etcd3.endpoints, watch_check_interval_s=1.0, watch_check_timeout_s=1.0)
    lease = writer.grant_lease(30, 2.0)
    won = writer.campaign(key, b"x", lease.lease_id, 2.0)
    events: list[WatchEvent] = []
    stop = threading.Event()

    def watch() -> None:
        for ev in watcher.watch(key, won.revision + 1, stop):
            events.append(ev)
            return

    t = threading.Thread(target=watch, daemon=True)
    t.start()
    time.sleep(0.5)  # the watch is established on member 0
    member = etcd3.members[0]
    member.kill() if fault == "kill" else member.pause()
    try:
        time.sleep(0.3)
        # The delete happens while the watcher's member is gone. If that member was the raft leader, the
        # others need an election first: retry, bounded.
        for attempt in tenacity.Retrying(stop=tenacity.stop_after_delay(15), wait=tenacity.wait_fixed(0.3),
                                         retry=tenacity.retry_if_exception_type(BackendError), reraise=True):
            with attempt:
                writer.revoke_lease(lease.lease_id, 3.0)
        t.join(15)
        assert events and events[0].deleted, f"watch lost the delete after its member was {fault}ed"
    finally:
        stop.set()
        if fault == "pause":
            member.resume()
        writer.close()
        watcher.close()


def test_leader_keeps_leading_when_its_member_dies(etcd3: EtcdCluster, name: str) -> None:
    rec = Recorder()
    timings = {"lease_ttl_s": 5, "keepalive_interval_s": 1.0, "min_remaining_ttl_s": 1.0}
    leader = make(etcd3.endpoints, name, "a", rec, **timings)  # talks to member 0 first
    standby = make(list(reversed(etcd3.endpoints)), name, "b", rec, **timings)
    leader.start()
    wait_for(lambda: leader.is_leader, 10, "leadership")
    standby.start()
    try:
        wait_for(lambda: len(rec.by("a")) >= 2, 5, "ticks")
        etcd3.members[0].kill()
        killed_at = time.monotonic()
        time.sleep(6)
        assert not leader.stats.step_downs, leader.stats.step_downs
        after = [r for r in rec.by("a") if r.start_mono > killed_at]
        assert len(after) >= 5, "the leader stopped ticking after losing one member of three"
        assert not rec.by("b")
    finally:
        leader.stop()
        standby.stop()
    rec.assert_safe()
