"""A 3-member etcd: the standby's watch and the leader's renewals survive losing the member they use."""
from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
import tenacity

from singleton.testing.recorder import Recorder, make, wait_for, wait_standing_by

from singleton.backends.abc import WatchEvent
from singleton.core.errors import BackendError
from singleton.dev.embedded import EtcdCluster, EtcdMember
from singleton.backends.etcd import EtcdBackend


# A raft re-election takes 1-2 s (etcd's election timeout, 1 s, randomised up to 2 s; more on a busy
# machine), and every renewal meanwhile fails at its deadline. To ride that out a leader needs a failure
# budget and a lease longer than it: here 4 renewals of 1 s deadline, and 5 s of lease before the margin.
# (The FAST timings, 0.5 s deadline and 2 failures, step down after about 1.5 s: by design, not a bug.)
RIDE_OUT = {"lease_ttl_s": 6, "keepalive_interval_s": 1.0, "renewal_timeout_s": 1.0, "max_failed_renewals": 4,
            "min_remaining_ttl_s": 1.0}


def raft_leader(cluster: EtcdCluster) -> EtcdMember:
    """The member that is raft leader now, as etcd itself reports it."""
    for entry in json.loads(cluster.etcdctl("endpoint", "status", "-w", "json")):
        status = entry["Status"]
        if status["leader"] == status["header"]["member_id"]:
            return next(m for m in cluster.members if str(m.endpoint) == entry["Endpoint"])
    raise AssertionError("no raft leader")


def proc_state(member: EtcdMember) -> str:
    assert member.proc is not None
    return Path(f"/proc/{member.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


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
        # From the campaign's own revision: its put arrives first, which proves the stream is open on member 0.
        for ev in watcher.watch(key, won.revision, stop):
            events.append(ev)
            if ev.deleted:
                return

    t = threading.Thread(target=watch, daemon=True)
    t.start()
    member = etcd3.members[0]
    try:
        wait_for(lambda: events, 10, "the watch to deliver the put through member 0")
        member.kill() if fault == "kill" else member.pause()
        if fault == "pause":
            wait_for(lambda: proc_state(member) == "T", 5, "member 0 to be stopped")
        # The delete happens while the watcher's member is gone. If that member was the raft leader, the
        # others need an election first: retry, bounded.
        for attempt in tenacity.Retrying(stop=tenacity.stop_after_delay(15), wait=tenacity.wait_fixed(0.3),
                                         retry=tenacity.retry_if_exception_type(BackendError), reraise=True):
            with attempt:
                writer.revoke_lease(lease.lease_id, 3.0)
        t.join(15)
        assert [e.deleted for e in events] == [False, True], f"watch lost the delete after its member was {fault}ed"
    finally:
        stop.set()
        if fault == "pause":
            member.resume()
        writer.close()
        watcher.close()


def test_leader_keeps_leading_when_its_member_dies(etcd3: EtcdCluster, name: str) -> None:
    """The leader's member is the raft leader (the hard case, made certain rather than left to chance):
    losing it costs a raft re-election, which the leader rides out on the other two members."""
    rec = Recorder()
    raft = raft_leader(etcd3)
    others = [m.endpoint for m in etcd3.members if m is not raft]
    leader = make([raft.endpoint, *others], name, "a", rec, **RIDE_OUT)
    standby = make([*reversed(others), raft.endpoint], name, "b", rec, **RIDE_OUT)
    leader.start()
    try:
        wait_for(lambda: leader.is_leader, 10, "leadership")
        standby.start()
        wait_standing_by(standby, "a", 10)
        wait_for(lambda: len(rec.by("a")) >= 2, 5, "ticks")
        term = leader.election.term
        assert term is not None
        raft.kill()
        killed_at = time.monotonic()
        # Ridden out once a renewal sent after the kill went through (another member, a new raft leader).
        wait_for(lambda: leader.stats.step_downs or term.keeper.expires_at > killed_at + RIDE_OUT["lease_ttl_s"],
                 15, "a renewal sent after the kill to succeed")
        assert not leader.stats.step_downs, leader.stats.step_downs
        renewed_at = time.monotonic()
        wait_for(lambda: [r for r in rec.by("a") if r.start_mono > renewed_at], 5, "a tick after the renewal")
        assert not leader.stats.step_downs, leader.stats.step_downs
        assert leader.is_leader and leader.fencing_token == term.fencing_token
        # (a slot whose claim fell inside the raft election is skipped, not run late: wait for two after the kill)
        wait_for(lambda: len([r for r in rec.by("a") if r.start_mono > killed_at]) >= 2, 10,
                 "the leader to go on ticking")
        assert not leader.stats.step_downs, leader.stats.step_downs
        assert not rec.by("b")
    finally:
        leader.stop()
        standby.stop()
    rec.assert_safe()
