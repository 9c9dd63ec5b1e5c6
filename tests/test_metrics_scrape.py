"""/metrics of a real `singleton run`: no otel_scope_* labels on every series, and the counters people alert on
exist at 0 from the start (a series that first appears at 1 hides that increase from rate()/increase())."""
from __future__ import annotations

import re
import subprocess
import sys
import urllib.error
import urllib.request

from singleton.core.lease import StepDownReason
from singleton.core.timings import FAST
from singleton.dev.embedded import EtcdCluster, free_port
from singleton.runtime.telemetry import MISSED_REASONS, TICK_OUTCOMES
from singleton.testing.recorder import wait_for


def scrape(port: int) -> str:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=3) as resp:
            return str(resp.read().decode())
    except (urllib.error.URLError, OSError):
        return ""


def samples(text: str) -> dict[str, float]:
    """`name{labels}` -> value, labels in the exporter's order."""
    return {m.group(1): float(m.group(2)) for m in re.finditer(r"^(\w+(?:\{[^}]*\})?) (\S+)$", text, re.M)}


def test_a_fresh_replica_serves_zeroed_counters_and_no_scope_labels(etcd: EtcdCluster, name: str) -> None:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "singleton", "run", "--endpoints", etcd.endpoints_arg,
                             "--name", name, "--job", "singleton.examples:hello", "--id", "m1",
                             "--http-host", "127.0.0.1", "--http-port", str(port), *FAST.cli_args()],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: 'singleton_is_leader{replica_id="m1"} 1.0' in scrape(port), 20, "m1 to lead")
        text = scrape(port)
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert "otel_scope_" not in text
    found = samples(text)
    assert found['singleton_renewals_failed_total{replica_id="m1"}'] == 0
    for reason in StepDownReason:
        assert found[f'singleton_step_downs_total{{reason="{reason.value}",replica_id="m1"}}'] == 0, reason
    for outcome in TICK_OUTCOMES:
        assert f'singleton_ticks_total{{outcome="{outcome}",replica_id="m1"}}' in found, outcome
    assert found['singleton_ticks_total{outcome="failed",replica_id="m1"}'] == 0
    for reason in MISSED_REASONS:  # the missed-slot alert's increase() needs the 0 before a takeover's count
        assert found[f'singleton_missed_slots_total{{reason="{reason}",replica_id="m1"}}'] == 0, reason
    assert found['singleton_job_overdue_seconds{replica_id="m1"}'] == 0
    assert found['singleton_clock_skew_seconds{replica_id="m1"}'] == 0
