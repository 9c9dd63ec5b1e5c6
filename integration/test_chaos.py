"""The chaos harness in CI: every scenario once at --fast timings on a 3-member etcd, one scenario at the
default 10/3/2, the report and the timeline, and proof that the checks fail for a replica that ignores
its lease. Long runs: `singleton chaos --rounds N` (see README)."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from singleton.chaos.harness import Harness, ScenarioRun
from singleton.core.timings import DEFAULT, FAST
from singleton.chaos.report import write_report, write_timeline
from singleton.chaos.scenarios import SCENARIOS, run_scenario
from singleton.chaos.verdict import Verdict

RESULTS: list[tuple[Verdict, ScenarioRun]] = []


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Harness]:
    h = Harness(tmp_path_factory.mktemp("chaos"), members=3, replicas=3, timings=FAST).start()
    try:
        yield h
    finally:
        h.close()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_scenario_holds_at_fast_timings(harness: Harness, scenario: str) -> None:
    verdict, run = run_scenario(harness, scenario)
    RESULTS.append((verdict, run))  # type: ignore[arg-type]
    assert verdict.held, verdict.violations
    assert verdict.ticks > 0 and run.events  # type: ignore[attr-defined]


def test_report_and_timeline_are_written(harness: Harness) -> None:
    assert RESULTS, "run after the scenarios"
    assert len({run.namespace for _, run in RESULTS}) == len(RESULTS), "runs must not share keys or ledgers"
    report = write_report(harness.out_dir, RESULTS, FAST, "embedded, 3 members", 60.0)
    timeline = write_timeline(harness.out_dir, RESULTS)
    text = report.read_text()
    assert "every invariant held" in text and "| sigkill-leader | 1 | 1 |" in text and "## Every run" in text
    assert timeline is not None and timeline.stat().st_size > 10_000 and timeline.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.timeout(150)
def test_partition_holds_at_the_default_timings(tmp_path: Path) -> None:
    h = Harness(tmp_path, members=1, replicas=3, timings=DEFAULT).start()
    try:
        verdict, _ = run_scenario(h, "partition-leader")
    finally:
        h.close()
    assert verdict.held, verdict.violations
    assert verdict.takeovers_s and verdict.takeovers_s[0] <= DEFAULT.lease_ttl_s + 1.5


@pytest.mark.timeout(120)
@pytest.mark.parametrize("scenario", ["partition-leader", "sigstop-leader"])
def test_a_replica_that_ignores_its_lease_fails_the_invariants(tmp_path: Path, scenario: str) -> None:
    h = Harness(tmp_path, members=1, replicas=2, timings=FAST).start()
    try:
        verdict, _ = run_scenario(h, scenario, broken=True)
    finally:
        h.close()
    assert not verdict.held
    assert verdict.overlaps or verdict.duplicate_slots or any("cut leader" in v for v in verdict.violations), \
        verdict.violations
    # It claims nothing: the run-record check finds ticks etcd's history never heard of.
    assert any(v.startswith("run record:") and "no history entry" in v for v in verdict.violations), verdict.violations


@pytest.mark.parametrize("scenario", ["partition-leader", "sigstop-leader"])
def test_the_run_record_fences_a_replica_that_ignores_its_lease(tmp_path: Path, scenario: str) -> None:
    """The same broken replica with the run record on: once its term is over, etcd refuses its claims, so it
    cannot tick beside its successor (the invariants that failed above hold)."""
    h = Harness(tmp_path, members=1, replicas=2, timings=FAST).start()
    try:
        verdict, _ = run_scenario(h, scenario, broken=True, broken_keeps_record=True)
    finally:
        h.close()
    assert verdict.held, verdict.violations
    assert verdict.overlaps == 0 and verdict.duplicate_slots == 0


@pytest.mark.timeout(120)
def test_on_given_endpoints_it_keeps_to_its_namespace(etcd, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Against "your own" etcd (here the session's): member-level faults are skipped, other keys untouched."""
    from singleton.backends.etcd import EtcdBackend

    other = EtcdBackend(etcd.endpoints)
    other.guarded_put("/not-ours/leader", 0, "/not-ours/data", b"precious", 3.0)  # create_revision 0: absent key
    _, before = other.get("/not-ours/data", 3.0)
    h = Harness(tmp_path, endpoints=etcd.endpoints, replicas=3, timings=FAST).start()
    try:
        verdict, run = run_scenario(h, "sigkill-leader")
        skipped, skipped_run = run_scenario(h, "kill-leader-member")
    finally:
        h.close()
    assert verdict.held, verdict.violations
    assert [e.kind for e in skipped_run.events] == ["skipped"]  # type: ignore[attr-defined]
    kv, after = other.get("/not-ours/data", 3.0)
    assert kv is not None and kv.value == b"precious" and kv.mod_revision <= before
    other.close()
