"""Named fault injectors. Each one injects its fault, waits, heals it, and returns what it did (a FaultEvent).

The harness, not the replicas, decides when and to whom; the verdict later compares the ledger with
these events.
"""
from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Callable

from singleton.chaos.harness import PREFIX, FaultEvent, Harness
from singleton.dev.embedded import etcd_binary

Fault = Callable[[Harness], FaultEvent]
QUORUM_LOSS_S = 20.0


def _signal_leader(h: Harness, name: str, kind: str, sig: int, hold_s: float = 0.0) -> FaultEvent:
    leader = h.leader()
    assert h.replicas is not None
    event = h.record(FaultEvent(name, kind, time.monotonic(), leader, old_leader=leader))
    h.replicas.signal(leader, sig)
    if sig == signal.SIGSTOP:
        time.sleep(hold_s)
        h.replicas.signal(leader, signal.SIGCONT)
        event.healed_at_mono = time.monotonic()
    else:
        h.replicas.procs[leader].wait(30)
        event.healed_at_mono = time.monotonic()
        h.start_replica(in_place_of=leader)  # keep N replicas (on the same hosts, clocks and all)
    h.wait_tick(event.at_mono, h.timings.lease_ttl_s + 5, exclude=leader)
    return event


def sigkill_leader(h: Harness) -> FaultEvent:
    return _signal_leader(h, "sigkill-leader", "crash", signal.SIGKILL)


def sigterm_leader(h: Harness) -> FaultEvent:
    return _signal_leader(h, "sigterm-leader", "graceful", signal.SIGTERM)


def sigstop_leader(h: Harness) -> FaultEvent:
    """Frozen for longer than its whole lease, then thawed: it must not tick on the dead lease."""
    event = _signal_leader(h, "sigstop-leader", "pause", signal.SIGSTOP, hold_s=h.timings.lease_ttl_s + 2)
    time.sleep(2)  # give the thawed process the chance to misbehave
    return event


def partition_leader(h: Harness) -> FaultEvent:
    """Blackhole every connection of the leader to etcd (hangs, not resets) for longer than its lease."""
    leader = h.leader()
    event = h.record(FaultEvent("partition-leader", "partition", time.monotonic(), leader, old_leader=leader))
    for proxy in h.proxies[leader]:
        proxy.cut()
    time.sleep(h.timings.lease_ttl_s + 2)
    for proxy in h.proxies[leader]:
        proxy.heal()
    event.healed_at_mono = time.monotonic()
    return event


def _member_fault(h: Harness, name: str, member_of: Callable[[Harness, str], object], down_s: float) -> FaultEvent:
    leader = h.leader()
    member = member_of(h, leader)
    if h.cluster is None or member is None:
        return h.record(FaultEvent(name, "skipped", time.monotonic(), "-", detail="needs the embedded etcd"))
    event = h.record(FaultEvent(name, "etcd", time.monotonic(), member.name, old_leader=leader))  # type: ignore[attr-defined]
    member.kill()  # type: ignore[attr-defined]
    time.sleep(down_s)
    h.cluster.start_member(member)  # type: ignore[arg-type]
    event.healed_at_mono = time.monotonic()
    return event


def kill_leader_member(h: Harness) -> FaultEvent:
    """Kill the etcd member the leader talks to (first in its endpoint list); restart it 5 s later."""
    return _member_fault(h, "kill-leader-member", lambda h, leader: h.member_behind(leader), 5.0)


def kill_raft_leader(h: Harness) -> FaultEvent:
    return _member_fault(h, "kill-raft-leader", lambda h, _leader: h.raft_leader(), 5.0)


def quorum_loss(h: Harness) -> FaultEvent:
    """Stop a majority of the members (the only one, on a 1-member cluster) for 20 s, then restart them."""
    leader = h.leader()
    if h.cluster is None:
        return h.record(FaultEvent("quorum-loss", "skipped", time.monotonic(), "-", detail="needs the embedded etcd"))
    victims = h.cluster.members[: len(h.cluster.members) // 2 + 1]
    event = h.record(FaultEvent("quorum-loss", "etcd", time.monotonic(), ",".join(m.name for m in victims),
                                old_leader=leader))
    for member in victims:
        member.kill()
    time.sleep(QUORUM_LOSS_S)
    for member in victims:
        member.start(h.cluster.initial_cluster, h.cluster.token)
    h.cluster.wait_healthy(60)
    event.healed_at_mono = time.monotonic()
    return event


def cluster_restart(h: Harness) -> FaultEvent:
    """Stop every member and start them again from their data dirs."""
    leader = h.leader()
    if h.cluster is None:
        return h.record(FaultEvent("cluster-restart", "skipped", time.monotonic(), "-", detail="needs the embedded etcd"))
    event = h.record(FaultEvent("cluster-restart", "etcd", time.monotonic(), "all members", old_leader=leader))
    for member in h.cluster.members:
        member.stop()
    for member in h.cluster.members:
        member.start(h.cluster.initial_cluster, h.cluster.token)
    h.cluster.wait_healthy(60)
    event.healed_at_mono = time.monotonic()
    return event


def _replace_all(h: Harness, **kwargs: object) -> None:
    assert h.replicas is not None
    for replica in h.alive():
        h.replicas.signal(replica, signal.SIGTERM)
        h.replicas.procs[replica].wait(30)
    for _ in range(h.replica_count):
        h.start_replica(**kwargs)  # type: ignore[arg-type]
    h.wait_tick(time.monotonic(), h.timings.lease_ttl_s + 10)


def _job_fault(h: Harness, name: str, observe_s: float, **kwargs: object) -> FaultEvent:
    event = h.record(FaultEvent(name, "job", time.monotonic(), "all replicas", detail=str(kwargs)))
    _replace_all(h, **kwargs)
    time.sleep(observe_s)
    _replace_all(h)
    event.healed_at_mono = time.monotonic()
    return event


def slow_job(h: Harness) -> FaultEvent:
    return _job_fault(h, "slow-job", 6.0, hold_s=1.5)


def slow_job_past_lease(h: Harness) -> FaultEvent:
    return _job_fault(h, "slow-job-past-lease", h.timings.lease_ttl_s + 4, hold_s=h.timings.lease_ttl_s + 2)


def raising_job(h: Harness) -> FaultEvent:
    return _job_fault(h, "raising-job", 6.0, fail_every=2)


def clock_step(h: Harness) -> FaultEvent:
    """Step the leader's wall clock +1 h, then back (-1 h), 4 s apart; its monotonic clock does not move."""
    leader = h.leader()
    event = h.record(FaultEvent("clock-step", "clock", time.monotonic(), leader, old_leader=leader))
    for offset in ("3600", "0", "-3600", "0"):
        h.clock_files[leader].write_text(offset)
        time.sleep(4)
    event.healed_at_mono = time.monotonic()
    return event


def _wait_all_sensing(h: Harness, replicas: list[str], timeout_s: float) -> None:
    """Until each of `replicas` leads or has logged that it senses the leader (only with fast failover on)."""
    assert h.replicas is not None and h.run is not None
    if not h.run.fast_failover:
        return
    deadline = time.monotonic() + timeout_s
    waiting = list(replicas)
    while waiting and time.monotonic() < deadline:  # bounded: a replica that never gets there is the verdict's
        waiting = [r for r in waiting if not any(line in h.replicas.log(r) for line in ("sensing leader ",
                                                                                     "elected leader "))]
        if waiting:
            time.sleep(0.1)


def herd(h: Harness) -> FaultEvent:
    """Many replicas (10) campaigning at once, then the leader is killed under them."""
    assert h.replicas is not None
    leader = h.leader()
    event = h.record(FaultEvent("herd", "herd", time.monotonic(), "10 replicas"))
    # The standbys first, the leader last: a standby still alive when the leader dies senses it (fast failover) and
    # wins a term that the next kill ends before its first tick, a silent term of the harness's own making.
    for replica in sorted(h.alive(), key=lambda r: r == leader):
        h.replicas.signal(replica, signal.SIGKILL)
        h.replicas.procs[replica].wait(10)
    time.sleep(h.timings.lease_ttl_s + 1)  # let the old lease lapse: all ten start on an empty key
    started = [h.start_replica() for _ in range(10)]
    h.wait_tick(time.monotonic(), 20)
    # The leader dies "under" the herd: once every standby stands by and holds its sensing connection (a leader
    # killed before a standby ever reached it costs that standby the lease, by design: a refusal is not a death).
    _wait_all_sensing(h, started, timeout_s=20.0)
    event.healed_at_mono = time.monotonic()
    kill = _signal_leader(h, "herd-sigkill-leader", "crash", signal.SIGKILL)
    return kill


def revoke_live_leader(h: Harness) -> FaultEvent:
    """Fast failover's false positive, forced: `etcdctl lease revoke` of a leader that is alive and well. It must
    run no slot claimed after that (its claims compare the key, which is gone) and step down."""
    leader = h.leader()
    assert h.run is not None
    backend = h.backend()
    try:
        kv, _ = backend.get(f"{PREFIX}/{h.run.namespace}/leader", 5.0)
    finally:
        backend.close()
    if kv is None:
        return h.record(FaultEvent("revoke-live-leader", "skipped", time.monotonic(), leader, detail="no leader key"))
    event = h.record(FaultEvent("revoke-live-leader", "revoke", time.monotonic(), leader, old_leader=leader,
                                detail=f"lease {kv.lease_id:x} token {kv.create_revision}"))
    subprocess.run([etcd_binary("etcdctl"), "--endpoints=" + ",".join(str(e) for e in h.endpoints), "lease", "revoke",
                    f"{kv.lease_id:x}"], capture_output=True, timeout=10, check=True)
    event.healed_at_mono = time.monotonic()
    h.wait_tick(event.at_mono, h.timings.lease_ttl_s + 5, exclude=leader)
    return event


FAULTS: dict[str, Fault] = {f.__name__.replace("_", "-"): f for f in (
    sigkill_leader, sigterm_leader, sigstop_leader, partition_leader, kill_leader_member, kill_raft_leader,
    quorum_loss, cluster_restart, slow_job, slow_job_past_lease, raising_job, clock_step, herd, revoke_live_leader)}
