"""Writes what deploy/monitoring/ derives from singleton-rules.yaml and dashboard.py:

- prometheusrule.yaml: the same rule groups as a PrometheusRule for the Prometheus Operator;
- tests/singleton-rules-test.yaml: the promtool unit tests (the cases below; promtool compares every annotation,
  so each expected alert gets its rule's static description copied in, and its templated summary written out here);
- singleton-dashboard.json: the Grafana dashboard.

Run `python deploy/monitoring/build.py` after changing any of them; tests/test_monitoring.py fails while the
written files differ from what this makes.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
RULES = HERE / "singleton-rules.yaml"
PROMETHEUS_RULE = HERE / "prometheusrule.yaml"
RULE_TESTS = HERE / "tests" / "singleton-rules-test.yaml"
DASHBOARD = HERE / "singleton-dashboard.json"

J = 'job="singleton"'  # the scrape job every test series carries


def case(name: str, series: dict[str, str], alert: str, at: str, fired: list[tuple[dict[str, str], str]],
         interval: str = "15s") -> dict[str, Any]:
    """One promtool test group: input series, and the alerts (labels, summary) firing at `at` (none: [])."""
    return {"name": name, "interval": interval, "series": series, "alert": alert, "at": at, "fired": fired}


CASES = [
    case("a crashed leader and no successor for 30 s", {
        f'singleton_is_leader{{{J},replica_id="a"}}': "1x4 0x8",
        f'singleton_is_leader{{{J},replica_id="b"}}': "0x12"},
        "SingletonNoLeader", "150s", [({"job": "singleton"}, "No leader in singleton for 30 s")]),
    case("a handover leaves no gap", {
        f'singleton_is_leader{{{J},replica_id="a"}}': "1 1 1 0 0 0 0 0 0 0",
        f'singleton_is_leader{{{J},replica_id="b"}}': "0 0 0 1 1 1 1 1 1 1"},
        "SingletonNoLeader", "135s", []),
    case("no replica scraped at all", {'up{job="other"}': "1x10"},
         "SingletonNoLeader", "60s", [({}, "No leader for 30 s")]),
    case("per job: only the job that lost its leader", {
        f'singleton_is_leader{{{J},job_name="a",replica_id="r1"}}': "1x10",
        f'singleton_is_leader{{{J},job_name="b",replica_id="r1"}}': "0x10"},
        "SingletonNoLeader", "120s", [({"job": "singleton", "job_name": "b"}, "No leader in singleton (b) for 30 s")]),
    case("sharded: every replica reports is_leader 0, the groups are led", {
        f'singleton_is_leader{{{J},replica_id="a"}}': "0x12",
        f'singleton_is_leader{{{J},replica_id="b"}}': "0x12",
        f'singleton_groups_led{{{J},replica_id="a"}}': "1x12",
        f'singleton_groups_led{{{J},replica_id="b"}}': "1x12"},
        "SingletonNoLeader", "150s", []),
    case("sharded: a group's leader crashed and nobody took it for 30 s", {
        f'singleton_group_leader{{{J},replica_id="a",group="g1"}}': "1x12",
        f'singleton_group_leader{{{J},replica_id="b",group="g1"}}': "0x12",
        f'singleton_group_leader{{{J},replica_id="a",group="g2"}}': "1x3 0x9",
        f'singleton_group_leader{{{J},replica_id="b",group="g2"}}': "0x12"},
        "SingletonGroupNoLeader", "150s", [({"job": "singleton", "group": "g2"},
                                            "No leader for group g2 in singleton for 30 s")]),
    case("sharded: a rebalancing handover leaves no gap", {
        f'singleton_group_leader{{{J},replica_id="a",group="g1"}}': "1 1 1 0 0 0 0 0 0 0",
        f'singleton_group_leader{{{J},replica_id="b",group="g1"}}': "0 0 0 1 1 1 1 1 1 1"},
        "SingletonGroupNoLeader", "135s", []),
    case("a crash takeover counts missed slots", {
        f'singleton_missed_slots_total{{{J},replica_id="b",reason="takeover"}}': "0 0 0 4 4 4",
        f'singleton_missed_slots_total{{{J},replica_id="b",reason="coalesced"}}': "0x6"},
        "SingletonMissedSlots", "60s", [({"job": "singleton", "reason": "takeover"},
                                         "~4 slots missed in singleton in 5 min (takeover)")]),
    case("coalesced slots ran as one catch-up run", {
        f'singleton_missed_slots_total{{{J},replica_id="b",reason="coalesced"}}': "0 0 5 5 5"},
        "SingletonMissedSlots", "60s", []),
    case("missed slots per job", {
        f'singleton_missed_slots_total{{{J},job_name="x",replica_id="b",reason="overrun"}}': "0 1 2 3",
        f'singleton_missed_slots_total{{{J},job_name="y",replica_id="b",reason="overrun"}}': "0 0 0 0"},
        "SingletonMissedSlots", "45s", [({"job": "singleton", "job_name": "x", "reason": "overrun"},
                                         "~3 slots missed in singleton (x) in 5 min (overrun)")]),
    case("one run in ten fails", {
        f'singleton_ticks_total{{{J},replica_id="a",outcome="ok"}}': "0+9x60",
        f'singleton_ticks_total{{{J},replica_id="a",outcome="failed"}}': "0+1x60"},
        "SingletonRunsFailing", "10m", [({"job": "singleton"}, "10% of runs failing in singleton")]),
    case("runs succeed", {
        f'singleton_ticks_total{{{J},replica_id="a",outcome="ok"}}': "0+10x60",
        f'singleton_ticks_total{{{J},replica_id="a",outcome="failed"}}': "0x60"},
        "SingletonRunsFailing", "10m", []),
    case("a run ignores its cancel", {
        f'singleton_job_overdue_seconds{{{J},replica_id="a"}}': "0 0 5 20 35 50 65"},
        "SingletonJobStuck", "90s", [({"job": "singleton", "replica_id": "a"},
                                      "A run on a in singleton still runs 1m 5s after its cancel")]),
    case("a cancelled run that returns within the grace", {
        f'singleton_job_overdue_seconds{{{J},replica_id="a"}}': "0 0 1 0 0 1 0 0"},
        "SingletonJobStuck", "105s", []),
    case("a hung job made the leader step down", {
        f'singleton_step_downs_total{{{J},replica_id="a",reason="job_hung"}}': "0 0 1 1"},
        "SingletonJobHung", "45s", [({"job": "singleton", "replica_id": "a"},
                                     "a in singleton stepped down for a hung job")]),
    case("graceful step-downs are no hung job", {
        f'singleton_step_downs_total{{{J},replica_id="a",reason="shutdown"}}': "0 0 1 1",
        f'singleton_step_downs_total{{{J},replica_id="a",reason="job_hung"}}': "0 0 0 0"},
        "SingletonJobHung", "45s", []),
    case("renewals fail", {
        f'singleton_renewals_failed_total{{{J},replica_id="a"}}': "0 0 1 2 2"},
        "SingletonLeaseRenewalsFailing", "60s", [({"job": "singleton", "replica_id": "a"},
                                                  "~2 lease renewals failed on a in singleton in 5 min")]),
    case("renewals succeed", {f'singleton_renewals_failed_total{{{J},replica_id="a"}}': "0x10"},
         "SingletonLeaseRenewalsFailing", "120s", []),
    case("leadership moves six times in 90 s", {
        f'singleton_elections_won_total{{{J},replica_id="a"}}': "0 1 1 2 2 3 3",
        f'singleton_elections_won_total{{{J},replica_id="b"}}': "0 0 1 1 2 2 3"},
        "SingletonLeaderFlapping", "90s", [({"job": "singleton"}, "~6 leader changes in singleton in 15 min")]),
    case("a rolling restart: two handovers", {
        f'singleton_elections_won_total{{{J},replica_id="a"}}': "0 1 1 1",
        f'singleton_elections_won_total{{{J},replica_id="b"}}': "0 0 1 1"},
        "SingletonLeaderFlapping", "45s", []),
    case("sharded: one group keeps moving; starting up won many groups at once", {
        f'singleton_elections_won_total{{{J},replica_id="a"}}': "0 20 20 23 23 26 26",
        f'singleton_groups_led{{{J},replica_id="a"}}': "0 20 20 20 20 20 20",
        f'singleton_group_elections_won_total{{{J},replica_id="a",group="g1"}}': "0 1 1 2 2 3 3",
        f'singleton_group_elections_won_total{{{J},replica_id="b",group="g1"}}': "0 0 1 1 2 2 3",
        f'singleton_group_elections_won_total{{{J},replica_id="a",group="g2"}}': "0 1 1 1 1 1 1"},
        "SingletonLeaderFlapping", "90s", [({"job": "singleton", "group": "g1"},
                                            "~6 leader changes of group g1 in singleton in 15 min")]),
    case("a successor 3 s behind its predecessor", {
        f'singleton_clock_skew_seconds{{{J},replica_id="b"}}': "0 -3 -3 -3 -3 -3 -3"},
        "SingletonClockSkew", "90s", [({"job": "singleton", "replica_id": "b"},
                                        "b in singleton measured a 3 s clock skew at its takeover")]),
    case("a skew within NTP's reach", {f'singleton_clock_skew_seconds{{{J},replica_id="b"}}': "0.2x10"},
         "SingletonClockSkew", "150s", []),
]


class _Dumper(yaml.SafeDumper):
    """Indents lists under their key, as yamllint's default (and the hand-written manifests) want."""

    def increase_indent(self, flow: bool = False, indentless: bool = False) -> None:
        super().increase_indent(flow, False)


def _dump(doc: dict[str, Any]) -> str:
    return yaml.dump(doc, Dumper=_Dumper, sort_keys=False, width=120)


def load_rules() -> dict[str, Any]:
    return dict(yaml.safe_load(RULES.read_text()))


def prometheus_rule(rules: dict[str, Any]) -> str:
    doc = {"apiVersion": "monitoring.coreos.com/v1", "kind": "PrometheusRule",
           "metadata": {"name": "singleton", "labels": {"app.kubernetes.io/name": "singleton"}},
           "spec": rules}
    return ("---\n# Generated from singleton-rules.yaml by build.py: edit that file, then run build.py.\n"
            + _dump(doc))


def rule_tests(rules: dict[str, Any]) -> str:
    by_name = {r["alert"]: r for g in rules["groups"] for r in g["rules"]}
    tests = []
    for c in CASES:
        rule = by_name[c["alert"]]
        exp = [{"exp_labels": {**labels, "severity": rule["labels"]["severity"]},
                "exp_annotations": {"summary": summary, "description": rule["annotations"]["description"]}}
               for labels, summary in c["fired"]]
        tests.append({"name": c["name"], "interval": c["interval"],
                      "input_series": [{"series": s, "values": v} for s, v in c["series"].items()],
                      "alert_rule_test": [{"eval_time": c["at"], "alertname": c["alert"], "exp_alerts": exp}]})
    doc = {"rule_files": ["../singleton-rules.yaml"], "evaluation_interval": "15s", "tests": tests}
    return ("---\n# Generated by build.py from its CASES (run it after editing them or the rules): "
            "promtool test rules deploy/monitoring/tests/singleton-rules-test.yaml\n"
            + _dump(doc))


def dashboard_json() -> str:
    sys.path.insert(0, str(HERE))
    from dashboard import dashboard  # noqa: PLC0415 - a sibling script, not a package

    return json.dumps(dashboard(), indent=2) + "\n"


def outputs() -> dict[Path, str]:
    rules = load_rules()
    return {PROMETHEUS_RULE: prometheus_rule(rules), RULE_TESTS: rule_tests(rules), DASHBOARD: dashboard_json()}


if __name__ == "__main__":
    for path, text in outputs().items():
        path.write_text(text)
        print(f"wrote {path}")
