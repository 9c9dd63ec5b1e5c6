"""`singleton chaos --sharded` in CI: 3 sharded replicas x 12 groups (one every-second job each) at --fast timings
on a one-member etcd; the replica leading the most groups is cut from etcd, then (the same replicas) frozen with
SIGSTOP, each for longer than its lease. Every group is judged on its own (chaos/shardverdict.py)."""
from __future__ import annotations

from pathlib import Path

import pytest

from singleton.chaos.shardfaults import run_sharded_scenario
from singleton.chaos.sharded import ShardHarness
from singleton.chaos.shardverdict import takeover_bounds
from singleton.core.timings import FAST


@pytest.mark.timeout(120)
def test_partition_then_sigstop_of_the_busiest_member_holds_per_group(tmp_path: Path) -> None:
    h = ShardHarness(tmp_path, members=1, replicas=3, groups=12, timings=FAST).start()
    try:
        verdict, run = run_sharded_scenario(h, "partition-then-sigstop", settle_s=40)
    finally:
        h.close()
    assert verdict.held, verdict.violations
    assert [e.kind for e in run.events] == ["partition", "pause"]
    assert len(verdict.jobs) == 12 and all(j.runs > 0 for j in verdict.jobs)
    # Every orphaned group (3 or more of the 12 each time) was taken over, within the bound.
    assert len(verdict.takeovers_by_kind["partition"]) >= 3 and len(verdict.takeovers_by_kind["pause"]) >= 3
    assert max(verdict.takeovers_s) <= takeover_bounds(FAST, h.campaign_delay_s, 3)[1]
    assert verdict.overlaps == 0 and verdict.duplicate_slots == 0
