"""The shipped alert rules and dashboard queries on a real Prometheus scraping real replicas: SIGKILL the leader
and the missed-slot alert fires through Prometheus's HTTP API; every dashboard query runs on the same data."""
from __future__ import annotations

import re
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from singleton.core.timings import FAST
from singleton.dev.embedded import EtcdCluster, free_port
from singleton.dev.ledger import safety_violations
from singleton.dev.replicas import ReplicaSet
from singleton.testing import prometheus
from singleton.testing.prometheus import Prometheus, rules_with_for

MONITORING = Path(__file__).resolve().parent.parent / "deploy" / "monitoring"
REPLICAS = ("a", "b", "c")

pytestmark = pytest.mark.skipif(prometheus.binary("prometheus") is None,
                                reason="no prometheus binary: install Debian's `prometheus` package "
                                       "(or set SINGLETON_PROMETHEUS)")


def dashboard_queries() -> list[str]:
    sys.path.insert(0, str(MONITORING))
    from dashboard import RATE, queries  # noqa: PLC0415 - a sibling script, not a package

    return [q.replace(RATE, "5s") for q in queries()]


@pytest.fixture
def watched(etcd: EtcdCluster, tmp_path: Path, name: str) -> Iterator[tuple[ReplicaSet, Prometheus]]:
    # Without fast failover: a SIGKILLed leader then costs the rest of its lease, the missed slots the alert is about
    # (a sensed death is taken over within about a second and may miss none).
    rs = ReplicaSet(tmp_path, etcd.endpoints_arg, name, [*FAST.cli_args(), "--no-fast-failover"])
    ports = {r: free_port() for r in REPLICAS}
    # Every `for:` at 0 s: the test is about the expressions on real series, not about waiting.
    rules = rules_with_for(MONITORING / "singleton-rules.yaml", tmp_path / "rules.yaml", "0s")
    prom = Prometheus(tmp_path, [f"127.0.0.1:{p}" for p in ports.values()], [rules], interval_s=1.0)
    try:  # everything started here is stopped, whatever fails
        for r in REPLICAS:
            rs.start(r, extra_args=["--http-host", "127.0.0.1", "--http-port", str(ports[r])])
        prom.wait_ready()
        yield rs, prom
    finally:
        rs.stop_all()
        prom.close()
    assert not safety_violations(rs.ticks())


def test_a_killed_leader_fires_the_missed_slot_alert_on_a_real_prometheus(
        watched: tuple[ReplicaSet, Prometheus]) -> None:
    rs, prom = watched
    # Every replica scraped, one leading, and the missed-slot counters at 0 in Prometheus before the fault.
    prom.wait_for("3 replicas up", lambda: len(prom.query('up{job="singleton"} == 1')) == 3, 30)
    prom.wait_for("one leader", lambda: prom.query("sum(singleton_is_leader) == 1"), 30)
    prom.wait_for("zeroed missed-slot series", lambda: len(
        prom.query('singleton_missed_slots_total{reason="takeover"} == 0')) == 3, 15)
    assert not [a for a in prom.alerts() if a["labels"]["alertname"] == "SingletonMissedSlots"]

    leader = rs.quiet_moment().replica
    rs.signal(leader, signal.SIGKILL)
    rs.procs[leader].wait(10)

    # Lease 3 s (FAST) + 1 s to take over, a scrape and an evaluation (1 s each): well within 30 s.
    fired = prom.wait_for("SingletonMissedSlots firing", lambda: [
        a for a in prom.alerts() if a["labels"]["alertname"] == "SingletonMissedSlots"], 30)
    assert fired[0]["labels"]["reason"] == "takeover", fired
    assert fired[0]["labels"]["job"] == "singleton"
    assert float(fired[0]["value"]) >= 1
    assert re.fullmatch(r"~\d+ slots missed in singleton in 5 min \(takeover\)", fired[0]["annotations"]["summary"])
    successor = rs.wait_ticks(1, 10, after=rs.ticks()[-1].start_mono)[0].replica
    assert successor != leader

    # The dashboard's queries, on the same real series: each runs, and each without a `> 0` filter has data.
    for expr in dashboard_queries():
        if re.search(r"\)\s*>\s*0\)?$", expr):
            prom.query(expr)  # raises unless it runs
        else:  # the successor's histograms appear with its first renewals: wait for them, boundedly
            prom.wait_for(f"data for dashboard query {expr}", lambda: prom.query(expr), 15)  # noqa: B023
    referenced = set(re.findall(r"\bsingleton_[a-z_]+", " ".join(dashboard_queries())
                                + (MONITORING / "singleton-rules.yaml").read_text()))
    # Sharded replicas only serve these (runtime/shard/metrics.py; tests/test_shard_ops.py reads them); these are not.
    referenced -= {"singleton_groups_led", "singleton_group_leader", "singleton_group_elections_won_total"}

    def served() -> set[str]:
        return {s["metric"]["__name__"] for s in prom.query('{__name__=~"singleton_.*"}')}

    # A histogram's series appear with its first observation, the successor's after its first renewals and runs.
    try:
        prom.wait_for("every referenced metric served", lambda: referenced <= served(), 20)
    except AssertionError:
        raise AssertionError(f"metrics no replica serves: {sorted(referenced - served())}") from None
