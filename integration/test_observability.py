"""Metrics, health, readiness, the Admin gRPC API and the operator commands, on real processes and etcd."""
from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from singleton.core.timings import FAST
from singleton.testing.recorder import Recorder, make, wait_for

from singleton.dev.embedded import EtcdCluster, free_port
from singleton.ops.http import HttpServer
from singleton.dev.ledger import safety_violations
from singleton.testing.proxy import CuttableProxy
from singleton.dev.replicas import ReplicaSet
from singleton.v1 import admin_pb2, admin_pb2_grpc


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=3) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()
    except (urllib.error.URLError, OSError) as err:  # not listening yet
        return 0, str(err)


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus text, matching the given labels (0 when absent)."""
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        m = re.match(r"^([a-zA-Z_:][\w:]*)(\{(.*)\})? (\S+)$", line)
        if not m or m.group(1) != name:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', m.group(3) or ""))
        if all(found.get(k) == v for k, v in labels.items()):
            return float(m.group(4))
    return 0.0


class Pair:
    def __init__(self, rs: ReplicaSet, ports: dict[str, tuple[int, int]]) -> None:
        self.rs, self.ports = rs, ports

    def scrape(self, replica: str) -> str:
        return get(f"http://127.0.0.1:{self.ports[replica][0]}/metrics")[1]

    def admin(self, replica: str) -> admin_pb2_grpc.AdminStub:
        return admin_pb2_grpc.AdminStub(grpc.insecure_channel(f"127.0.0.1:{self.ports[replica][1]}"))


@pytest.fixture
def pair(etcd: EtcdCluster, tmp_path: Path, name: str) -> Iterator[Pair]:
    rs = ReplicaSet(tmp_path, etcd.endpoints_arg, name, FAST.cli_args(), hold_s=0.1)
    ports = {r: (free_port(), free_port()) for r in ("a", "b")}
    try:  # every process started here is stopped, whatever fails
        rs.start("a", extra_args=["--http-port", str(ports["a"][0]), "--admin-address", str(ports["a"][1])])
        rs.wait_ticks(1, 15, replica="a")
        rs.start("b", extra_args=["--http-port", str(ports["b"][0]), "--admin-address", str(ports["b"][1])])
        p = Pair(rs, ports)
        wait_for(lambda: get(f"http://127.0.0.1:{ports['b'][0]}/readyz")[0] == 200, 45, "b ready")  # a process start: slow on a busy machine
        yield p
    finally:
        rs.stop_all()
    ticks = rs.ticks()
    assert not safety_violations(ticks)


def test_metrics_move_across_a_resign_and_the_new_leader_takes_the_next_second(pair: Pair) -> None:
    a0, b0 = pair.scrape("a"), pair.scrape("b")
    assert metric(a0, "singleton_is_leader", replica_id="a") == 1
    assert metric(b0, "singleton_is_leader", replica_id="b") == 0
    assert metric(a0, "singleton_elections_won_total", replica_id="a") == 1
    assert metric(a0, "singleton_fencing_token", replica_id="a") > 0
    assert 0 < metric(a0, "singleton_lease_remaining_seconds", replica_id="a") <= 3
    assert metric(a0, "singleton_ticks_total", replica_id="a", outcome="run") >= 1
    assert metric(a0, "singleton_tick_lateness_seconds_count", replica_id="a") >= 1
    assert metric(a0, "singleton_tick_lateness_seconds_bucket", replica_id="a", le="0.0005") >= 0  # ms buckets
    assert 'le="0.0025"' in a0 and 'le="0.005"' in a0
    wait_for(lambda: metric(pair.scrape("a"), "singleton_renewal_latency_seconds_count", replica_id="a") >= 1,
             5, "a renewal")

    # WatchStatus on b streams the change; Resign on a hands over.
    statuses: list[admin_pb2.Status] = []
    stream = pair.admin("b").WatchStatus(admin_pb2.WatchStatusRequest(), timeout=15)

    def follow() -> None:
        try:
            for st in stream:
                statuses.append(st)
                if st.role == "leader":
                    return
        except grpc.RpcError:
            pass

    t = threading.Thread(target=follow, daemon=True)
    t.start()
    wait_for(lambda: statuses, 5, "the first status")
    assert statuses[0].role == "follower" and statuses[0].leader_id == "a"
    before = pair.admin("a").GetStatus(admin_pb2.GetStatusRequest(), timeout=3)
    assert before.role == "leader" and before.fencing_token > 0 and before.lease_remaining_s > 0
    resp = pair.admin("a").Resign(admin_pb2.ResignRequest(), timeout=3)
    assert resp.resigned and resp.fencing_token == before.fencing_token
    t.join(10)
    stream.cancel()
    assert statuses[-1].role == "leader" and statuses[-1].fencing_token > before.fencing_token

    pair.rs.wait_ticks(2, 5, replica="b")
    ticks = pair.rs.ticks()
    last_a = max((t for t in ticks if t.replica == "a"), key=lambda t: t.slot)
    first_b = min((t for t in ticks if t.replica == "b"), key=lambda t: t.slot)
    assert first_b.slot == last_a.slot + 1, "resign missed a second"
    assert last_a.end_mono is not None

    a1, b1 = pair.scrape("a"), pair.scrape("b")
    assert metric(a1, "singleton_is_leader", replica_id="a") == 0
    assert metric(a1, "singleton_step_downs_total", replica_id="a", reason="resigned") == 1
    assert metric(b1, "singleton_is_leader", replica_id="b") == 1
    assert metric(b1, "singleton_elections_won_total", replica_id="b") == 1
    assert metric(b1, "singleton_takeover_time_seconds_count", replica_id="b") == 1
    # b counts the vacancy from seeing a's key deleted to winning: inside the gap the ledger shows
    # between a's last tick ending and b's first starting (one monotonic clock for all processes).
    took = metric(b1, "singleton_takeover_time_seconds_sum", replica_id="b")
    assert 0 < took < first_b.start_mono - last_a.end_mono, (took, last_a, first_b)
    print("scrape of b before:\n" + "\n".join(l for l in b0.splitlines() if l.startswith("singleton_") and "bucket" not in l))
    print("scrape of b after:\n" + "\n".join(l for l in b1.splitlines() if l.startswith("singleton_") and "bucket" not in l))


def test_cli_status_json_agrees_with_etcd_and_watch_and_resign_work(pair: Pair, etcd: EtcdCluster) -> None:
    rs = pair.rs
    base = [sys.executable, "-m", "singleton"]
    conn = ["--endpoints", etcd.endpoints_arg, "--name", rs.name]
    out = subprocess.run([*base, "status", *conn, "--json"], capture_output=True, text=True, timeout=20, check=True)
    status = json.loads(out.stdout)
    # etcd's own client, not ours, is the reference
    kv = json.loads(etcd.etcdctl("get", f"/singleton/{rs.name}/leader", "-w", "json"))["kvs"][0]
    assert status["leader"]["fencing_token"] == kv["create_revision"]
    assert status["leader"]["replica_id"] == "a" and status["leader"]["lease_id"] == f"{kv['lease']:x}"

    watcher = subprocess.Popen([*base, "status", *conn, "--watch", "--json", "--max-events", "2"],
                               stdout=subprocess.PIPE, text=True)
    lines: list[str] = []

    def read() -> None:
        for line in watcher.stdout or ():
            lines.append(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        # Its first line is the leader as read; it watches from that read's revision on, so from here
        # on it misses no change.
        wait_for(lambda: lines, 20, "the watcher's first line")
        resign = subprocess.run([*base, "resign", *conn, "--json"], capture_output=True, text=True, timeout=30)
        assert resign.returncode == 0, resign.stderr
        result = json.loads(resign.stdout)
        assert result["resigned"]["leader"] == "a" and result["new_leader"]["leader"] == "b"
        watcher.wait(15)
        reader.join(5)
    finally:
        if watcher.poll() is None:
            watcher.kill()
            watcher.wait()
    events = [json.loads(line) for line in lines]
    assert [e["leader"] for e in events] == ["a", None, "b"]
    rs.wait_ticks(2, 5, replica="b")
    ticks = rs.ticks()
    last_a = max((t for t in ticks if t.replica == "a"), key=lambda t: t.slot)
    first_b = min((t for t in ticks if t.replica == "b"), key=lambda t: t.slot)
    assert first_b.slot == last_a.slot + 1, "resign missed a second"
    # The vacancy it reports (delete to put, as it received them) is the one the ledger shows, give or
    # take the delivery of one watch event to a process on a busy machine.
    since = events[2]["since_last_change_s"]
    assert last_a.end_mono is not None and since is not None
    assert 0 <= since < first_b.start_mono - last_a.end_mono + 0.5, (since, last_a, first_b)


def test_healthz_turns_red_when_the_ticker_is_wedged(etcd: EtcdCluster, name: str,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    import singleton.runtime.ticking as ticking

    release = threading.Event()
    wedged = threading.Event()
    real_plan_next = ticking.next_schedule_plan

    def stuck_plan_next(*args: object, **kwargs: object) -> object:
        if wedged.is_set():
            release.wait(30)  # the ticker thread hangs here, as a deadlocked loop would
        return real_plan_next(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(ticking, "next_schedule_plan", stuck_plan_next)
    s = make(etcd.endpoints, name, "w", Recorder())
    http = HttpServer("127.0.0.1", 0, s.health, s.readiness).start()
    url = f"http://127.0.0.1:{http.port}"
    try:
        s.start()
        wait_for(lambda: s.is_leader, 5, "leadership")
        assert get(url + "/healthz")[0] == 200 and get(url + "/readyz")[0] == 200
        wedged.set()
        wait_for(lambda: get(url + "/healthz")[0] == 503, 8, "healthz to turn red")
        code, body = get(url + "/healthz")
        assert "ticker loop stuck" in body
        release.set()
        wedged.clear()
        wait_for(lambda: get(url + "/healthz")[0] == 200, 5, "healthz to recover")
    finally:
        release.set()
        s.stop()
        http.close()


def test_readyz_reflects_losing_etcd(etcd: EtcdCluster, name: str) -> None:
    proxy = CuttableProxy("127.0.0.1", etcd.members[0].client_port)
    rec = Recorder()
    leader = make(etcd.endpoints, name, "l", rec)
    follower = make([proxy.endpoint], name, "f", rec)
    http = HttpServer("127.0.0.1", 0, follower.health, follower.readiness).start()
    url = f"http://127.0.0.1:{http.port}/readyz"
    try:
        leader.start()
        wait_for(lambda: leader.is_leader, 5, "leadership")
        follower.start()
        wait_for(lambda: get(url)[0] == 200, 8, "ready")
        proxy.cut()
        wait_for(lambda: get(url)[0] == 503, 12, "not ready once etcd is unreachable")
        assert "no answer from etcd" in get(url)[1]
        assert get(url.replace("readyz", "healthz"))[0] == 200  # alive, just not connected
        proxy.heal()
        wait_for(lambda: get(url)[0] == 200, 15, "ready again")
    finally:
        proxy.heal()
        follower.stop()
        leader.stop()
        http.close()
        proxy.close()
