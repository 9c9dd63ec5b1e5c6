"""The sharded chaos verdict on made-up evidence: it holds for a clean takeover and finds each kind of breach,
group by group (a slot twice, two runs at once across replicas, a late takeover, a thawed or cut replica running
on its old term), and counts the slots missed."""
from __future__ import annotations

from singleton.chaos.harness import FaultEvent
from singleton.chaos.shardreplica import JobTick
from singleton.chaos.shardverdict import KeyEvent, ShardEvidence, judge_sharded, takeover_bounds
from singleton.core.timings import FAST

AT = 100.0  # the fault, on the monotonic clock; slot s starts at s seconds (+ 0.01)


def run(job: str, replica: str, token: int, slot: int, start: float | None = None, hold_s: float = 0.05) -> JobTick:
    at = slot + 0.01 if start is None else start
    return JobTick(replica, {"r0": 1, "r1": 2, "r2": 3}[replica], token, slot, at, at, at + hold_s, job=job)


def evidence(ticks: list[JobTick], kind: str = "pause", keys: list[KeyEvent] | None = None) -> ShardEvidence:
    event = FaultEvent(f"{kind}-busiest", kind, AT, "r0", healed_at_mono=AT + 5, old_leader="r0")
    return ShardEvidence(["a", "b"], ticks, [event], [["a"]], keys or [], 90.0, 112.0, 3)


def clean() -> list[JobTick]:
    """Group a: r0 runs 95..99, r1 takes over at 104 (4.01 s after the fault: lease 3 + 1 s); b: r2 throughout."""
    ticks = [run("a", "r0", 10, s) for s in range(95, 100)] + [run("a", "r1", 20, s) for s in range(104, 110)]
    return ticks + [run("b", "r2", 11, s) for s in range(95, 110)]


def test_a_clean_takeover_holds_and_counts_the_missed_slots() -> None:
    verdict = judge_sharded(evidence(clean()), FAST, 0.5)
    assert verdict.held, verdict.violations
    assert verdict.takeovers_by_kind == {"pause": [104.01 - AT]}
    assert [j.missed_instants for j in verdict.jobs] == [4, 0]  # a: 100..103 nobody ran
    note = verdict.notes[0]
    assert "1 orphaned groups" in note and "0 needed the delay" in note and "4 slot(s) missed at this fault" in note


def test_a_slot_run_twice_across_replicas_fails_that_group_only() -> None:
    verdict = judge_sharded(evidence(clean() + [run("a", "r2", 30, 105, start=105.5)]), FAST, 0.5)
    assert not verdict.held and verdict.duplicate_slots == 1
    assert all(v.startswith("group a: ") for v in verdict.violations), verdict.violations
    assert [j.held for j in verdict.jobs] == [False, True]


def test_two_runs_of_one_job_at_once_across_replicas_fail() -> None:
    ticks = clean() + [run("b", "r1", 40, 111, start=109.02)]  # while r2's slot 109 still runs
    verdict = judge_sharded(evidence(ticks), FAST, 0.5)
    assert verdict.overlaps == 1 and any("group b: 1 run(s) started while another ran" in v
                                         for v in verdict.violations), verdict.violations


def test_a_takeover_past_lease_plus_one_plus_the_campaign_delay_fails() -> None:
    late = [t for t in clean() if not (t.job == "a" and t.replica == "r1")]
    late += [run("a", "r1", 20, s) for s in range(106, 110)]  # 6.01 s after the fault
    assert takeover_bounds(FAST, 0.5, 3)[1] < 6.01
    verdict = judge_sharded(evidence(late), FAST, 0.5)
    assert any("first tick elsewhere 6.01 s" in v for v in verdict.violations), verdict.violations


def test_a_takeover_before_the_lease_could_lapse_fails() -> None:
    early = [t for t in clean() if not (t.job == "a" and t.replica == "r1")] + [run("a", "r1", 20, 100)]
    verdict = judge_sharded(evidence(early), FAST, 0.5)
    assert any("before the live replica's lease could lapse" in v for v in verdict.violations), verdict.violations


def test_a_thawed_replica_running_on_its_old_term_fails() -> None:
    verdict = judge_sharded(evidence(clean() + [run("a", "r0", 10, 110)]), FAST, 0.5)
    assert any("thawed replica ran slot(s) [110] on its old term" in v for v in verdict.violations), \
        verdict.violations


def test_a_cut_replica_running_after_etcd_dropped_its_key_fails() -> None:
    ticks = clean() + [run("a", "r0", 10, 102)]  # the cut r0 runs slot 102 (2.01 s after the cut, in bound)...
    dropped = [KeyEvent(102.0, "a", True, 10, "")]  # ...but etcd dropped its key just before
    verdict = judge_sharded(evidence(ticks, "partition", dropped), FAST, 0.5)
    assert any("still running slot 102 when etcd dropped its key" in v for v in verdict.violations), \
        verdict.violations
    assert verdict.jobs[0].missed_instants == 3  # 100, 101, 103: 102 ran (on the cut replica)


def test_the_command_refuses_what_sharded_chaos_does_not_take() -> None:
    import pytest

    from singleton.chaos.command import run_chaos
    from singleton.core.errors import ConfigError

    common = dict(endpoints="", replicas=3, rounds=1, out="unused", fast=True, members=1, sharded=True)
    with pytest.raises(ConfigError, match="unknown sharded scenario"):
        run_chaos(scenarios="sigkill-leader", **common)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="no --job"):
        run_chaos(scenarios="all", job="x:y", **common)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="--groups 1 to 1000"):
        run_chaos(scenarios="all", groups=0, **common)  # type: ignore[arg-type]
