"""The missed-instant judge of the sharding tests (singleton/testing/misses.py): a slot nobody ran fails unless the
replica responsible logged a machine reason for it."""
from __future__ import annotations

from singleton.dev.ledger import Tick
from singleton.testing.misses import judge_misses


def ticks(*runs: tuple[int, int]) -> list[Tick]:
    return [Tick("r", 1, token, slot, float(slot), float(slot), float(slot) + 0.1) for token, slot in runs]


def test_an_unexplained_gap_fails_and_logged_reasons_explain_theirs() -> None:
    runs = {"j": ticks((5, 10), (5, 12), (5, 14), (9, 17), (11, 20))}
    logs = ["elected leader of group j replica=a token=5",
            "slot 11 job=j skipped: woke 1.2 s late replica=a token=5",
            "could not claim slot 13 of job j (not running it): deadline_exceeded",
            "elected leader of group j replica=b token=9",
            "stepping down (resigned) replica=b token=9 remaining=2.0s",  # graceful: explains nothing
            "elected leader of group other replica=c token=10",
            "stepping down (lease_expiring) replica=c token=10 remaining=0.5s"]  # another group's trouble
    misses = judge_misses(runs, logs, {"j": "j"})
    assert misses.unexplained == {"j": [15, 16, 18, 19]}
    assert misses.explained == {"skipped (woke)": 1, "claim failed": 1}
    # The term before the gap ended in lease trouble: the slots until the next term are the machine's.
    troubled = [*logs, "stepping down (lease_expiring) replica=a token=5 remaining=0.4s"]
    misses = judge_misses(runs, troubled, {"j": "j"}, excused={"j": [18, 19]})
    assert misses.unexplained == {} and misses.explained["term ended by lease_expiring"] == 2
    assert "2 term ended by lease_expiring" in misses.summary()
