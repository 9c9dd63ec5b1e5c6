"""3 real `singleton run` processes on a real etcd, writing every tick to a shared append-only ledger.

The leader is sent SIGTERM, SIGKILL, or SIGSTOP past its lease; verdicts come from the ledger only:
no two ticks overlap, no slot runs twice, tokens grow, and each takeover is inside its bound.
"""
from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from singleton.dev.embedded import EtcdCluster
from singleton.dev.ledger import Tick, safety_violations
from singleton.core.timings import DEFAULT, FAST, Timings
from singleton.dev.replicas import ReplicaSet


@pytest.fixture
def replicas(request: pytest.FixtureRequest, etcd: EtcdCluster, tmp_path: Path, name: str) -> Iterator[ReplicaSet]:
    timings: Timings = getattr(request, "param", FAST)
    rs = ReplicaSet(tmp_path, etcd.endpoints_arg, name, timings.cli_args(), hold_s=0.2)
    rs.ttl_s = timings.lease_ttl_s  # type: ignore[attr-defined]
    try:  # every process started here is stopped, whatever fails
        for i in range(3):
            rs.start(f"r{i}")
        rs.wait_ticks(3, 20)
        yield rs
    finally:
        rs.stop_all()
    check_invariants(rs.ticks())


def check_invariants(ticks: list[Tick]) -> None:
    assert ticks, "nothing ticked"
    problems = safety_violations(ticks)
    assert not problems, "; ".join(problems)


def kill_leader(rs: ReplicaSet, sig: int) -> tuple[str, Tick, float]:
    last = rs.quiet_moment()
    rs.signal(last.replica, sig)
    return last.replica, last, time.monotonic()


def first_tick_after(rs: ReplicaSet, old: str, after: float, timeout_s: float) -> Tick:
    tick = rs.first_tick_after(after, timeout_s, exclude=old)
    assert tick is not None, f"no takeover within {timeout_s} s; logs in {rs.workdir}"
    return tick


def graceful_handover(rs: ReplicaSet) -> None:
    old, _, sent = kill_leader(rs, signal.SIGTERM)
    new = first_tick_after(rs, old, sent, 5)
    last_old = max((t for t in rs.ticks() if t.replica == old), key=lambda t: t.slot)
    assert new.slot == last_old.slot + 1, f"graceful handover missed {new.slot - last_old.slot - 1} second(s)"
    assert new.start_mono - sent < 1.5
    rs.wait_ticks(2, 5, replica=new.replica, after=sent)


def crash_failover(rs: ReplicaSet, ttl_s: float) -> None:
    old, _, killed = kill_leader(rs, signal.SIGKILL)
    new = first_tick_after(rs, old, killed, ttl_s + 3)
    # bound: remaining lease (at most the TTL) + 1 s to the next slot, plus process scheduling slack
    assert new.start_mono - killed <= ttl_s + 1 + 0.5, f"crash takeover took {new.start_mono - killed:.2f} s"
    rs.wait_ticks(2, 5, replica=new.replica, after=killed)


def test_sigterm_hands_the_very_next_second_to_a_standby(replicas: ReplicaSet) -> None:
    graceful_handover(replicas)


def test_sigkill_standby_takes_over_within_the_lease_plus_one_second(replicas: ReplicaSet) -> None:
    crash_failover(replicas, replicas.ttl_s)  # type: ignore[attr-defined]


def test_sigstop_past_the_lease_never_ticks_on_the_expired_lease(replicas: ReplicaSet) -> None:
    rs = replicas
    old, _, stopped = kill_leader(rs, signal.SIGSTOP)
    ttl = rs.ttl_s  # type: ignore[attr-defined]
    new = first_tick_after(rs, old, stopped, ttl + 3)
    time.sleep(max(0.0, stopped + ttl + 2 - time.monotonic()))
    rs.signal(old, signal.SIGCONT)
    resumed = time.monotonic()
    rs.wait_ticks(3, 5, replica=new.replica, after=resumed)
    old_after = [t for t in rs.ticks() if t.replica == old and t.start_mono > stopped]
    assert not old_after, f"the paused replica ticked after it woke: {old_after}"
    assert "stepping down (lease_expiring)" in rs.log(old) or "stepping down (renewals_failed)" in rs.log(old)


@pytest.mark.parametrize("replicas", [DEFAULT], indirect=True)
def test_default_timings_graceful_then_crash(replicas: ReplicaSet) -> None:
    graceful_handover(replicas)
    crash_failover(replicas, DEFAULT.lease_ttl_s)
