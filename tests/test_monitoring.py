"""deploy/monitoring/: the alert rules pass `promtool check rules` and their unit tests (`promtool test rules`),
every alert has a firing and a quiet case, the derived files are up to date, the dashboard's queries parse,
and the Operator manifests match the plain rules and the metrics Service. (On a real Prometheus with real
replicas: integration/test_alerting.py.)"""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml
from yamllint import config as yamllint_config
from yamllint import linter

from singleton.testing import prometheus

ROOT = Path(__file__).resolve().parent.parent
MONITORING = ROOT / "deploy" / "monitoring"
PROMTOOL = prometheus.binary("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="no promtool: install Debian's `prometheus` package "
                                                              "(or set SINGLETON_PROMTOOL)")


def load(name: str) -> ModuleType:
    sys.path.insert(0, str(MONITORING))  # build.py imports its sibling dashboard.py
    spec = importlib.util.spec_from_file_location(name, MONITORING / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    # Registered before it runs: its dataclasses look their module up in sys.modules.
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL
    return subprocess.run([PROMTOOL, *args], capture_output=True, text=True, timeout=60, cwd=MONITORING)


def rules() -> list[dict[str, Any]]:
    return [r for g in yaml.safe_load((MONITORING / "singleton-rules.yaml").read_text())["groups"] for r in g["rules"]]


def test_derived_files_are_up_to_date() -> None:
    for path, text in load("build").outputs().items():
        assert path.read_text() == text, f"{path.name} is stale: run python deploy/monitoring/build.py"


def test_the_issue_s_alerts_are_there_each_with_a_firing_and_a_quiet_unit_test() -> None:
    names = {r["alert"] for r in rules()}
    assert {"SingletonNoLeader", "SingletonMissedSlots", "SingletonRunsFailing", "SingletonJobStuck",
            "SingletonLeaseRenewalsFailing", "SingletonLeaderFlapping", "SingletonClockSkew"} <= names
    cases = load("build").CASES
    for name in names:
        assert any(c["alert"] == name and c["fired"] for c in cases), f"{name}: no case where it fires"
        assert any(c["alert"] == name and not c["fired"] for c in cases), f"{name}: no case where it stays quiet"
    for rule in rules():
        assert rule["labels"]["severity"] in ("warning", "critical")
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]


def test_operator_manifests_match_the_rules_and_the_metrics_service() -> None:
    spec = yaml.safe_load((MONITORING / "prometheusrule.yaml").read_text())["spec"]
    assert spec == yaml.safe_load((MONITORING / "singleton-rules.yaml").read_text())
    monitor = yaml.safe_load((MONITORING / "servicemonitor.yaml").read_text())
    service = yaml.safe_load((ROOT / "k8s" / "service.yaml").read_text())
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["endpoints"][0]["port"] in {p["name"] for p in service["spec"]["ports"]}
    kustomization = yaml.safe_load((MONITORING / "kustomization.yaml").read_text())
    assert all((MONITORING / r).exists() for r in kustomization["resources"])


def test_yamllint() -> None:
    conf = yamllint_config.YamlLintConfig("{extends: default, rules: {line-length: {max: 200}}}")
    problems = [f"{p}:{e.line}: {e.message}" for p in sorted(MONITORING.rglob("*.yaml"))
                for e in linter.run(p.read_text(), conf)]
    assert not problems, problems


def test_dashboard_json_has_the_panels_and_every_target_a_query() -> None:
    board = json.loads((MONITORING / "singleton-dashboard.json").read_text())
    titles = {p["title"] for p in board["panels"]}
    assert {"Who leads", "Ticks per second", "Tick lateness", "Takeover time", "Missed slots",
            "Renewal latency"} <= titles
    assert len({p["id"] for p in board["panels"]}) == len(board["panels"])
    for panel in board["panels"]:
        assert panel["targets"] and all(t["expr"] and t["refId"] for t in panel["targets"]), panel["title"]
        assert panel["datasource"]["uid"] == "${datasource}"
    cells = [(p["gridPos"]["x"] + dx, p["gridPos"]["y"] + dy) for p in board["panels"]
             for dx in range(p["gridPos"]["w"]) for dy in range(p["gridPos"]["h"])]
    assert len(cells) == len(set(cells)), "panels overlap"
    assert all(p["gridPos"]["x"] + p["gridPos"]["w"] <= 24 for p in board["panels"])


@needs_promtool
def test_promtool_check_rules() -> None:
    done = promtool("check", "rules", "singleton-rules.yaml")
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(rules())} rules found" in done.stdout


@needs_promtool
def test_promtool_unit_tests_of_every_alert() -> None:
    done = promtool("test", "rules", "tests/singleton-rules-test.yaml")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


@needs_promtool
def test_promtool_unit_tests_can_fail(tmp_path: Path) -> None:
    """A rule that no longer fires when it should is caught (here: flapping needs 9 changes instead of 5)."""
    broken = (MONITORING / "singleton-rules.yaml").read_text().replace(
        "(increase(singleton_elections_won_total[15m])) > 4", "(increase(singleton_elections_won_total[15m])) > 8")
    assert broken != (MONITORING / "singleton-rules.yaml").read_text()
    (tmp_path / "singleton-rules.yaml").write_text(broken)
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "t.yaml").write_text((MONITORING / "tests" / "singleton-rules-test.yaml").read_text())
    done = subprocess.run([str(PROMTOOL), "test", "rules", "tests/t.yaml"], capture_output=True, text=True,
                          timeout=60, cwd=tmp_path)
    assert done.returncode != 0 and "SingletonLeaderFlapping" in done.stdout + done.stderr


@needs_promtool
def test_dashboard_queries_parse(tmp_path: Path) -> None:
    """promtool parses PromQL only inside rules: each query becomes a recording rule."""
    dash = load("dashboard")
    records = [{"record": f"dashboard:q{i}", "expr": q.replace(dash.RATE, "1m")} for i, q in enumerate(dash.queries())]
    (tmp_path / "q.yaml").write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": records}]}))
    done = subprocess.run([str(PROMTOOL), "check", "rules", str(tmp_path / "q.yaml")], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    # ... and a broken one would not.
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump({"groups": [{"name": "d", "rules": [
        {"record": "dashboard:bad", "expr": "sum by (job_name (rate(singleton_ticks_total[1m]))"}]}]}))
    done = subprocess.run([str(PROMTOOL), "check", "rules", str(tmp_path / "bad.yaml")], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode != 0
