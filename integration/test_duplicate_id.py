"""Two real `singleton run` processes started at once with the same --id (a misconfiguration) on a real etcd.

The election is decided by the lease, never by the replica id: exactly one ticks at a time, no slot runs
twice, the standby says it is a follower, and `singleton status` names the leader's pid and lease, which
tells the two apart. Verdicts come from the ledger, which records each tick's pid.
"""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from singleton.core.timings import FAST
from singleton.dev.embedded import EtcdCluster, free_port
from singleton.dev.ledger import safety_violations
from singleton.dev.replicas import ReplicaSet
from singleton.v1 import admin_pb2, admin_pb2_grpc

SAME_ID = "pod-0"


class Twins:
    def __init__(self, rs: ReplicaSet, admin_ports: dict[str, int]) -> None:
        self.rs, self.admin_ports = rs, admin_ports

    def pid(self, proc: str) -> int:
        return self.rs.procs[proc].pid

    def by_pid(self, pid: int) -> str:
        return next(p for p, proc in self.rs.procs.items() if proc.pid == pid)

    def role(self, proc: str) -> admin_pb2.Status:
        with grpc.insecure_channel(f"127.0.0.1:{self.admin_ports[proc]}") as channel:
            return admin_pb2_grpc.AdminStub(channel).GetStatus(admin_pb2.GetStatusRequest(), timeout=5)


@pytest.fixture
def twins(etcd: EtcdCluster, tmp_path: Path, name: str) -> Iterator[Twins]:
    rs = ReplicaSet(tmp_path, etcd.endpoints_arg, name, FAST.cli_args(), hold_s=0.2)
    admin_ports = {p: free_port() for p in ("p1", "p2")}
    try:  # every process started here is stopped, whatever fails
        for proc in ("p1", "p2"):  # back to back: both campaign at the same moment
            rs.start(proc, extra_args=["--id", SAME_ID, "--admin-address", str(admin_ports[proc])])
        rs.wait_ticks(3, 20)
        yield Twins(rs, admin_ports)
    finally:
        rs.stop_all()
    ticks = rs.ticks()
    assert ticks and {t.replica for t in ticks} == {SAME_ID}
    problems = safety_violations(ticks)
    assert not problems, "; ".join(problems)


def status_json(etcd: EtcdCluster, name: str) -> dict[str, object]:
    out = subprocess.run([sys.executable, "-m", "singleton", "status", "--endpoints", etcd.endpoints_arg,
                          "--name", name, "--json"], capture_output=True, text=True, timeout=20, check=True)
    leader = json.loads(out.stdout)["leader"]
    assert isinstance(leader, dict)
    return leader


def test_same_id_twice_one_ticks_and_status_names_the_right_process(twins: Twins, etcd: EtcdCluster,
                                                                    name: str) -> None:
    rs = twins.rs
    last = rs.quiet_moment()
    leader, standby = twins.by_pid(last.pid), "p2" if twins.by_pid(last.pid) == "p1" else "p1"
    assert {t.pid for t in rs.ticks()} == {twins.pid(leader)}, "both processes ticked while both ran"

    # The standby does not take itself for the leader, though the leader record carries its id.
    assert twins.role(standby).role == "follower"
    assert twins.role(leader).role == "leader" and twins.role(leader).fencing_token == last.token
    holder = status_json(etcd, name)
    kv = json.loads(etcd.etcdctl("get", f"/singleton/{name}/leader", "-w", "json"))["kvs"][0]
    assert holder["replica_id"] == SAME_ID and holder["pid"] == twins.pid(leader)
    assert holder["lease_id"] == f"{kv['lease']:x}" and holder["fencing_token"] == last.token

    # The twin takes over on a graceful stop, the very next second, with a larger token.
    rs.signal(leader, signal.SIGTERM)
    sent = time.monotonic()
    new = rs.first_tick_after(sent, 5, exclude=None)
    while new is not None and new.pid != twins.pid(standby):  # a tick of the old leader still in flight
        new = rs.first_tick_after(new.start_mono, 5)
    assert new is not None, f"the twin did not take over; logs in {rs.workdir}"
    last_old = max(t.slot for t in rs.ticks() if t.pid == twins.pid(leader))
    assert new.slot == last_old + 1 and new.token > last.token
    rs.wait_ticks(2, 5, after=sent)
    assert status_json(etcd, name)["pid"] == twins.pid(standby)
    assert twins.role(standby).role == "leader"
