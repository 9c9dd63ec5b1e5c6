"""Fast failover with real `singleton run` processes at the default timings (10 s lease): a standby senses the
leader's death and revokes its lease, so a crash costs about a second; a lease revoked under a leader that is alive
(a false death, forced with etcdctl) costs no safety. Figures over many rounds: bench/fast_failover.py."""
from __future__ import annotations

import signal
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from singleton.backends.etcd import EtcdBackend
from singleton.core.timings import DEFAULT
from singleton.dev.embedded import EtcdCluster, free_port
from singleton.dev.ledger import CRASH_FILE_ENV, safety_violations
from singleton.dev.replicas import ReplicaSet
from singleton.testing.recorder import wait_for

SLACK_S = 0.5  # process scheduling on a busy 2-core machine
# Sensing + revoke + campaign take milliseconds; then the next whole second. The lease path takes at least
# TTL - keepalive interval (7 s here): anything under this bound is the sensing at work.
FAST_BOUND_S = 1.5 + SLACK_S


def ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError):
        return False


@pytest.fixture
def replicas(etcd: EtcdCluster, tmp_path: Path, name: str) -> Iterator[ReplicaSet]:
    rs = ReplicaSet(tmp_path, etcd.endpoints_arg, name, DEFAULT.cli_args(), hold_s=0.2)
    ports = {f"r{i}": free_port() for i in range(3)}
    crash_file = tmp_path / "crash"
    try:
        for replica, port in ports.items():
            rs.start(replica, extra_args=["--http-port", str(port)], env={CRASH_FILE_ENV: str(crash_file)})
        rs.wait_ticks(2, 20)
        wait_for(lambda: all(ready(port) for port in ports.values()), 20, "every replica ready")
        yield rs
    finally:
        rs.stop_all()
    ticks = rs.ticks()
    assert ticks and not safety_violations(ticks), safety_violations(ticks)


def sensed(rs: ReplicaSet, dead: str) -> bool:
    return any(f"leader {dead} is dead" in rs.log(r) for r in rs.procs if r != dead)


def test_crashes_fail_over_in_about_a_second_and_a_revoked_live_leader_runs_no_further_slot(
        replicas: ReplicaSet, etcd: EtcdCluster, name: str) -> None:
    rs = replicas
    leader_key = f"/singleton/{name}/leader"

    # 1. A false death, forced: the live leader's lease revoked under it.
    backend = EtcdBackend(etcd.endpoints)
    try:
        victim = rs.quiet_moment().replica
        kv, _ = backend.get(leader_key, 5.0)
        assert kv is not None
        etcd.etcdctl("lease", "revoke", f"{kv.lease_id:x}")
        revoked = time.monotonic()
        new = rs.first_tick_after(revoked, FAST_BOUND_S + 2, exclude=victim)
        assert new is not None and new.start_mono - revoked <= FAST_BOUND_S, "no prompt takeover after the revoke"
        # Its claims compare the key, which went with the lease: at most the slot claimed just before (~0.25 s
        # ahead) may still start; its guarded writes are refused; it steps down.
        late = [t for t in rs.ticks() if t.replica == victim and t.token == kv.create_revision
                and t.start_mono > revoked]
        assert len(late) <= 1 and all(t.start_mono - revoked <= 0.25 + SLACK_S for t in late), late
        assert not backend.guarded_put(leader_key, kv.create_revision, f"/singleton/{name}/data", b"stale", 5.0)
        wait_for(lambda: "stepping down (" in rs.log(victim), 10, "the revoked leader to step down")
        assert rs.procs[victim].poll() is None, "a revoked leader steps down and stays a standby"
    finally:
        backend.close()

    # 2. SIGKILL of the leader: the standbys sense it at once.
    last = rs.quiet_moment()
    rs.signal(last.replica, signal.SIGKILL)
    killed = time.monotonic()
    new = rs.first_tick_after(killed, DEFAULT.lease_ttl_s + 3, exclude=last.replica)
    assert new is not None and new.start_mono - killed <= FAST_BOUND_S, \
        f"crash takeover took {None if new is None else round(new.start_mono - killed, 2)} s; logs in {rs.workdir}"
    assert sensed(rs, last.replica)
    # Not a handover, yet no second is lost: the successor numbers after the record's last claim, which is the
    # dead leader's last tick or the slot it had claimed ahead (and never ran).
    assert last.slot < new.slot <= last.slot + 2, (last, new)

    # 3. A crash inside a running job (the job kills its own process halfway through).
    leader = rs.quiet_moment().replica
    (rs.workdir / "crash").touch()
    wait_for(lambda: rs.procs[leader].poll() is not None, 5, "the job to crash its process")
    crashed = max(t.start_mono for t in rs.ticks() if t.replica == leader)
    new = rs.first_tick_after(crashed, DEFAULT.lease_ttl_s + 3, exclude=leader)
    assert new is not None and new.start_mono - crashed <= FAST_BOUND_S, f"logs in {rs.workdir}"
    assert sensed(rs, leader)
