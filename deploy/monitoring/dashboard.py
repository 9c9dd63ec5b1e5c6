"""The Grafana dashboard for singleton, as data (written to singleton-dashboard.json by build.py).

PANELS is also what bench/dashboard_png.py plots from a real Prometheus, and what tests/test_monitoring.py
checks: every query parses (promtool), names only metrics a replica serves, and returns data from a real one.
Queries aggregate `by (job_name)` where a per-job view matters: series without that label (one job per
replica set) aggregate as one.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

RATE = "$__rate_interval"  # Grafana's rate window; tools that run the queries elsewhere substitute their own


@dataclass(frozen=True)
class Panel:
    title: str
    kind: str  # Grafana panel type: timeseries, state-timeline, stat
    unit: str  # Grafana unit: s, short, ops, none
    targets: tuple[tuple[str, str], ...]  # (PromQL, legend)
    description: str = ""


def _q(name: str, q: float, by: str = "job_name") -> str:
    return f"histogram_quantile({q}, sum by (le, {by}) (rate({name}_bucket[{RATE}])))"


PANELS = (
    Panel("Who leads", "state-timeline", "none",
          (("max by (replica_id) (singleton_is_leader)", "{{replica_id}}"),),
          "1 while a replica leads (singleton_is_leader); each row is a replica."),
    Panel("Leaders now", "stat", "none",
          (("sum by (job_name) (singleton_is_leader)", "leaders {{job_name}}"),),
          "Should be 1: 0 means no leader (SingletonNoLeader fires after 30 s)."),
    Panel("Ticks per second", "timeseries", "ops",
          (("sum by (job_name) (rate(singleton_ticks_total{outcome=\"run\"}[" + RATE + "]))", "runs {{job_name}}"),
           ("sum by (job_name) (rate(singleton_ticks_total{outcome=~\"failed|timed_out\"}[" + RATE + "]))",
            "failed {{job_name}}")),
          "Runs started per second per job (1 for a once-a-second job), and the failed or timed-out ones."),
    Panel("Tick lateness", "timeseries", "s",
          ((_q("singleton_tick_lateness_seconds", 0.5), "p50 {{job_name}}"),
           (_q("singleton_tick_lateness_seconds", 0.99), "p99 {{job_name}}")),
          "Tick start minus its slot's whole second (singleton_tick_lateness_seconds histogram)."),
    Panel("Takeover time", "timeseries", "s",
          (("max by (replica_id) (singleton_takeover_time_seconds_sum / singleton_takeover_time_seconds_count)",
            "mean {{replica_id}}"),),
          "How long the leader key stood empty before each replica won it, averaged over its takeovers since it "
          "started: milliseconds while standbys watch the key. The wait for a crashed leader's lease to lapse "
          "comes before the key empties, so it is not in here: Leaders now and Missed slots show it. (A "
          "histogram's series appear with its first observation, so increase() would miss a first takeover.)"),
    Panel("Missed slots", "timeseries", "short",
          (("sum by (job_name, reason) (increase(singleton_missed_slots_total[5m]))", "{{reason}} {{job_name}}"),),
          "Slots that did not run in the last 5 min, by reason (takeover, overrun, late, unclaimed, coalesced)."),
    Panel("Renewal latency", "timeseries", "s",
          ((_q("singleton_renewal_latency_seconds", 0.5, "replica_id"), "p50 {{replica_id}}"),
           (_q("singleton_renewal_latency_seconds", 0.99, "replica_id"), "p99 {{replica_id}}")),
          "Lease renewal round trip to etcd, by the leader that renewed."),
    Panel("Lease left and failed renewals", "timeseries", "s",
          (("max by (replica_id) (singleton_lease_remaining_seconds)", "lease left {{replica_id}}"),
           ("sum by (replica_id) (increase(singleton_renewals_failed_total[5m]))", "failed renewals {{replica_id}}")),
          "The leader's lease by its own monotonic clock, and renewals that failed in the last 5 min."),
    Panel("Leader changes and step-downs", "timeseries", "short",
          (("sum by (job_name) (increase(singleton_elections_won_total[5m]))", "elections won {{job_name}}"),
           ("sum by (reason) (increase(singleton_step_downs_total[5m])) > 0", "step-down {{reason}}")),
          "Terms won in the last 5 min (SingletonLeaderFlapping fires above 4 in 15 min), and why leaders stopped "
          "leading: a step-down of a process that exits at once (SIGTERM) may never be scraped."),
    Panel("Clock skew at takeover", "timeseries", "s",
          (("max by (replica_id) (singleton_clock_skew_seconds)", "{{replica_id}}"),),
          "The predecessor's wall clock minus ours, measured at the last takeover (alert above 0.5 s)."),
)


def queries() -> list[str]:
    return [expr for panel in PANELS for expr, _ in panel.targets]


def _grid(i: int) -> dict[str, int]:
    """The first panel (who leads) across the top, the rest two to a row."""
    if i == 0:
        return {"h": 6, "w": 24, "x": 0, "y": 0}
    return {"h": 8, "w": 12, "x": 12 * ((i - 1) % 2), "y": 6 + 8 * ((i - 1) // 2)}


def _panel(i: int, p: Panel) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": i + 1, "type": p.kind, "title": p.title, "description": p.description,
        "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "gridPos": _grid(i),
        "fieldConfig": {"defaults": {"unit": p.unit}, "overrides": []},
        "targets": [{"refId": chr(ord("A") + n), "expr": expr, "legendFormat": legend,
                     "datasource": {"type": "prometheus", "uid": "${datasource}"}}
                    for n, (expr, legend) in enumerate(p.targets)],
        "options": {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True}},
    }
    if p.kind == "state-timeline":
        out["fieldConfig"]["defaults"]["mappings"] = [
            {"type": "value", "options": {"0": {"text": "standby", "color": "transparent"},
                                          "1": {"text": "leader", "color": "green"}}}]
    return out


def dashboard() -> dict[str, Any]:
    return {
        "uid": "singleton", "title": "singleton", "tags": ["singleton", "etcd"], "editable": True,
        "schemaVersion": 39, "version": 1, "refresh": "10s", "time": {"from": "now-1h", "to": "now"},
        "timezone": "browser", "graphTooltip": 1,
        "templating": {"list": [{"name": "datasource", "label": "Prometheus", "type": "datasource",
                                 "query": "prometheus", "current": {}, "hide": 0}]},
        "annotations": {"list": []},
        "panels": [_panel(i, p) for i, p in enumerate(PANELS)],
    }
