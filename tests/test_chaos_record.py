"""The chaos verdict's run-record check and skew checks, on hand-made evidence: a consistent ledger and history
pass, and each kind of tampering (a slot claimed twice, a tick with no entry or another term's, entries out of
order, a run the ledger never saw, a record behind its history, a missing skew warning) fails."""
from __future__ import annotations

from pathlib import Path

import pytest

from singleton.chaos.harness import FaultEvent, ScenarioRun
from singleton.chaos.recordcheck import record_violations
from singleton.chaos.verdict import judge
from singleton.core.timings import FAST
from singleton.dev.ledger import Tick
from singleton.v1.run_pb2 import RunEntry, RunRecord

BASE = 1_800_000_000


def tick(replica: str, token: int, slot: int, at: float, clock_s: float = 0.0, finished: bool = True) -> Tick:
    """A tick at monotonic `at`, on a host whose wall clock is `clock_s` off (wall = BASE + at + clock_s)."""
    return Tick(replica, hash(replica) % 1000, token, slot, at, BASE + at + clock_s, at + 0.05 if finished else None)


def entry(seq: int, t: Tick, outcome: str = "ok") -> RunEntry:
    return RunEntry(seq=seq, slot=t.slot, fencing_token=t.token, replica_id=t.replica, outcome=outcome)


def story() -> tuple[list[Tick], list[RunEntry], RunRecord]:
    """r0 (token 5) ticks slots 10..12 and is killed in slot 12; r1 (token 9) takes over and ticks 16..17."""
    ticks = [tick("r0", 5, 10, 0.0), tick("r0", 5, 11, 1.0), tick("r0", 5, 12, 2.0, finished=False),
             tick("r1", 9, 16, 6.0), tick("r1", 9, 17, 7.0)]
    entries = [entry(1, ticks[0]), entry(2, ticks[1]), entry(3, ticks[2], "unknown"), entry(4, ticks[3]),
               entry(5, ticks[4])]
    return ticks, entries, RunRecord(seq=5, slot=17, fencing_token=9, replica_id="r1")


def test_a_history_that_tells_the_ledgers_story_passes() -> None:
    ticks, entries, record = story()
    assert record_violations(ticks, entries, record, 1000) == []
    # A claimed slot that never ran (claimed ahead, then stopped) is in the record, not in the ledger: fine.
    skipped = RunEntry(seq=6, slot=18, fencing_token=9, replica_id="r1", outcome="skipped")
    assert record_violations(ticks, [*entries, skipped], RunRecord(seq=6, slot=18, fencing_token=9), 1000) == []


def test_a_tick_still_running_at_the_end_may_lack_its_entry_but_not_one_a_successor_followed() -> None:
    ticks, entries, record = story()
    last = tick("r1", 9, 18, 8.0, finished=False)
    assert record_violations([*ticks, last], entries, record, 1000) == []
    without_unknown = [e for e in entries if e.outcome != "unknown"]
    assert any("no history entry: slot 12" in p for p in record_violations(ticks, without_unknown, record, 1000))


@pytest.mark.parametrize("tamper, expected", [
    (lambda t, e, r: (t, [*e, RunEntry(seq=6, slot=17, fencing_token=9, outcome="ok")], RunRecord(seq=6, slot=17)),
     "more than one history entry"),
    (lambda t, e, r: (t, [x for x in e if x.seq != 2], r), "1 tick(s) with no history entry: slot 11"),
    (lambda t, e, r: ([*t[:3], tick("r2", 7, 16, 6.0), t[4]], e, r), "names another term"),
    (lambda t, e, r: (t, [*e[:3], entry(4, t[4]), entry(5, t[3])], r), "out of order"),
    (lambda t, e, r: (t[:4], e, r), "the ledger never saw: slot 17"),
    (lambda t, e, r: (t, e, RunRecord(seq=4, slot=16, fencing_token=9)), "behind its own history"),
    (lambda t, e, r: (t, [], None), "no run record"),
    (lambda t, e, r: (t, e, RunRecord(seq=1001, slot=17)), "history ring (1000) is smaller"),
])
def test_every_tampering_is_caught(tamper, expected: str) -> None:  # type: ignore[no-untyped-def]
    ticks, entries, record = tamper(*story())
    problems = record_violations(ticks, entries, record, 1000)
    assert any(expected in p for p in problems), problems


def handover_run(tmp_path: Path, successor_clock_s: float, warned: bool, offsets: dict[str, float]) -> ScenarioRun:
    """r0 hands over (SIGTERM at +2.5) to r1, whose clock is `successor_clock_s` ahead: its slots number on from
    its own clock."""
    r0 = [tick("r0", 5, 100 + i, float(i)) for i in range(3)]
    jump = round(max(0.0, successor_clock_s))
    r1 = [tick("r1", 9, 103 + jump + i, 3.0 + i, successor_clock_s) for i in range(3)]
    run = ScenarioRun("skewed-clocks", tmp_path, "ns", -1.0, ticks=[*r0, *r1], clock_offsets_s=offsets,
                      events=[FaultEvent("sigterm-leader", "graceful", 2.5, "r0", healed_at_mono=2.6,
                                         old_leader="r0")])
    run.history = [entry(i + 1, t) for i, t in enumerate(run.ticks)]
    run.run_record = RunRecord(seq=6, slot=run.ticks[-1].slot, fencing_token=9)
    line = "WARNING singleton: clock skew: the previous leader's wall clock was -3.00 s from ours replica=r1 token=9"
    (tmp_path / "r1.log").write_text(line + "\n" if warned else "INFO singleton: first slot 106 replica=r1 token=9\n")
    return run


def test_a_handover_between_skewed_clocks_must_warn_and_may_jump_only_by_the_skew(tmp_path: Path) -> None:
    skewed = {"r0": 0.0, "r1": 3.0}
    held = judge(handover_run(tmp_path, 3.0, warned=True, offsets=skewed), FAST)
    assert held.held, held.violations
    assert held.history_entries == 6 and any("jumped by 3" in n for n in held.notes)
    silent = judge(handover_run(tmp_path, 3.0, warned=False, offsets=skewed), FAST)
    assert any("without a 'clock skew' warning" in v for v in silent.violations), silent.violations
    # Same clocks (by the ledger) but the slot numbers jumped: seconds were missed.
    run = handover_run(tmp_path, 3.0, warned=True, offsets=skewed)
    for t in run.ticks:
        t.start_wall = BASE + t.start_mono
    assert any("graceful handover missed 3 s" in v for v in judge(run, FAST).violations)


def test_the_verdict_fails_when_the_record_was_not_read(tmp_path: Path) -> None:
    run = handover_run(tmp_path, 0.0, warned=False, offsets={})
    run.history, run.history_error = None, "Unavailable: etcd down"
    assert any("could not be read: Unavailable" in v for v in judge(run, FAST).violations)
