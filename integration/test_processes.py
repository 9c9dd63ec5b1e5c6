"""3 real `singleton run` processes on a real etcd, writing every tick to a shared append-only ledger.

The leader is sent SIGTERM, SIGKILL, or SIGSTOP past its lease; verdicts come from the ledger only:
no two ticks overlap, no slot runs twice, tokens grow, and each takeover is inside its bound.
"""
from __future__ import annotations

import math
import signal
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from singleton.dev.embedded import EtcdCluster, free_port
from singleton.core.timings import DEFAULT, FAST, Timings
from singleton.dev.ledger import Tick, safety_violations
from singleton.dev.replicas import ReplicaSet
from singleton.testing.recorder import wait_for

# etcd looks for expired leases every 0.5 s (its lessor's loop), so a key outlives its lease by up to that.
ETCD_EXPIRY_CHECK_S = 0.5
SLACK_S = 0.5  # process scheduling on a busy 2-core machine


def ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError):
        return False  # not listening yet, or 503: still campaigning, or not connected


@pytest.fixture
def replicas(request: pytest.FixtureRequest, etcd: EtcdCluster, tmp_path: Path, name: str) -> Iterator[ReplicaSet]:
    timings: Timings = getattr(request, "param", FAST)
    rs = ReplicaSet(tmp_path, etcd.endpoints_arg, name, timings.cli_args(), hold_s=0.2)
    rs.ttl_s = timings.lease_ttl_s  # type: ignore[attr-defined]
    ports = {f"r{i}": free_port() for i in range(3)}
    try:  # every process started here is stopped, whatever fails
        for replica, port in ports.items():
            rs.start(replica, extra_args=["--http-port", str(port)])
        rs.wait_ticks(3, 20)
        # Ready is leader or follower (campaign decided) and connected: the standbys are in place.
        wait_for(lambda: all(ready(port) for port in ports.values()), 20, "every replica ready")
        yield rs
    finally:
        rs.stop_all()
    check_invariants(rs.ticks())


def check_invariants(ticks: list[Tick]) -> None:
    assert ticks, "nothing ticked"
    problems = safety_violations(ticks)
    assert not problems, "; ".join(problems)


def kill_leader(rs: ReplicaSet, sig: int) -> tuple[str, float, float]:
    """Signal the leader between two ticks; returns it and the monotonic and wall times of the signal."""
    last = rs.quiet_moment()
    rs.signal(last.replica, sig)
    return last.replica, time.monotonic(), time.time()


def first_tick_after(rs: ReplicaSet, old: str, after: float, timeout_s: float) -> Tick:
    tick = rs.first_tick_after(after, timeout_s, exclude=old)
    assert tick is not None, f"no takeover within {timeout_s} s; logs in {rs.workdir}"
    return tick


def graceful_handover(rs: ReplicaSet) -> None:
    old, sent, sent_wall = kill_leader(rs, signal.SIGTERM)
    new = first_tick_after(rs, old, sent, 5)
    last_old = max((t for t in rs.ticks() if t.replica == old), key=lambda t: t.slot)
    assert new.slot == last_old.slot + 1, f"graceful handover missed {new.slot - last_old.slot - 1} second(s)"
    # Promptly: the old leader ran at most the slot that was already coming when it got SIGTERM.
    assert new.slot <= math.floor(sent_wall) + 2, f"handed over only at slot {new.slot}, signalled at {sent_wall:.2f}"
    rs.wait_ticks(2, 5, replica=new.replica, after=sent)


def crash_failover(rs: ReplicaSet, ttl_s: float) -> None:
    old, killed, _ = kill_leader(rs, signal.SIGKILL)
    bound = ttl_s + ETCD_EXPIRY_CHECK_S + 1 + SLACK_S
    new = first_tick_after(rs, old, killed, bound + 2)
    # bound: the remaining lease (at most the TTL), etcd noticing it lapsed, up to 1 s to the next slot
    assert new.start_mono - killed <= bound, f"crash takeover took {new.start_mono - killed:.2f} s > {bound:g} s"
    rs.wait_ticks(2, 5, replica=new.replica, after=killed)


def test_sigterm_hands_the_very_next_second_to_a_standby(replicas: ReplicaSet) -> None:
    graceful_handover(replicas)


def test_sigkill_standby_takes_over_within_the_lease_plus_one_second(replicas: ReplicaSet) -> None:
    crash_failover(replicas, replicas.ttl_s)  # type: ignore[attr-defined]


def test_sigstop_past_the_lease_never_ticks_on_the_expired_lease(replicas: ReplicaSet) -> None:
    rs = replicas
    old, stopped, _ = kill_leader(rs, signal.SIGSTOP)
    ttl = rs.ttl_s  # type: ignore[attr-defined]
    new = first_tick_after(rs, old, stopped, ttl + ETCD_EXPIRY_CHECK_S + 1 + SLACK_S + 2)
    time.sleep(max(0.0, stopped + ttl + 2 - time.monotonic()))
    rs.signal(old, signal.SIGCONT)
    resumed = time.monotonic()
    # Woken, it checks its lease before anything else: past the margin (or, if its renewal's answer
    # comes first, told by etcd that the lease is gone), it steps down.
    reasons = ("lease_expiring", "renewals_failed", "lease_lost")
    wait_for(lambda: any(f"stepping down ({r})" in rs.log(old) for r in reasons), 10, "the thawed leader to step down")
    rs.wait_ticks(2, 5, replica=new.replica, after=resumed)
    old_after = [t for t in rs.ticks() if t.replica == old and t.start_mono > stopped]
    assert not old_after, f"the paused replica ticked after it woke: {old_after}"
    # Fast failover: a paused process keeps its sockets open, so no standby took it for dead.
    assert not any(f"leader {old} is dead" in rs.log(r) for r in rs.procs), "a paused leader's lease was revoked"


@pytest.mark.parametrize("replicas", [DEFAULT], indirect=True)
def test_default_timings_graceful_then_crash(replicas: ReplicaSet) -> None:
    graceful_handover(replicas)
    crash_failover(replicas, DEFAULT.lease_ttl_s)
