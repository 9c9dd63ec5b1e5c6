"""The invariants, checked on a scenario's evidence (ledger + fault events + etcd), never on replica claims."""
from __future__ import annotations

from dataclasses import dataclass, field

from singleton.dev.ledger import Tick, duplicate_slots, overlaps, tokens_grow
from singleton.chaos.harness import FaultEvent, ScenarioRun
from singleton.core.timings import Timings

SLACK_S = 0.5  # process scheduling on a busy 2-core machine


@dataclass
class Verdict:
    scenario: str
    faults: list[str]
    takeovers_s: list[float] = field(default_factory=list)
    takeovers_by_kind: dict[str, list[float]] = field(default_factory=dict)
    overlaps: int = 0
    duplicate_slots: int = 0
    missed_seconds: int = 0
    ticks: int = 0
    violations: list[str] = field(default_factory=list)

    @property
    def held(self) -> bool:
        return not self.violations


def _first_other(ticks: list[Tick], after: float, old: str | None) -> Tick | None:
    return next((t for t in ticks if t.start_mono > after and t.replica != old), None)


def _check_event(ev: FaultEvent, ticks: list[Tick], timings: Timings, verdict: Verdict,
                 key_events: list[tuple[float, bool, int]]) -> None:
    ttl = timings.lease_ttl_s
    new = _first_other(ticks, ev.at_mono, ev.old_leader)
    if ev.kind == "graceful":
        old_slots = [t.slot for t in ticks if t.replica == ev.old_leader]
        if new is None or not old_slots:
            verdict.violations.append(f"{ev.name}: no takeover")
            return
        verdict.takeovers_s.append(new.start_mono - ev.at_mono)
        verdict.takeovers_by_kind.setdefault(ev.kind, []).append(new.start_mono - ev.at_mono)
        if new.slot != max(old_slots) + 1:
            verdict.violations.append(f"{ev.name}: graceful handover missed {new.slot - max(old_slots) - 1} s")
    elif ev.kind in ("crash", "pause", "partition"):
        if new is None:
            verdict.violations.append(f"{ev.name}: no takeover")
            return
        took = new.start_mono - ev.at_mono
        verdict.takeovers_s.append(took)
        verdict.takeovers_by_kind.setdefault(ev.kind, []).append(took)
        if took > ttl + 1 + SLACK_S:
            verdict.violations.append(f"{ev.name}: takeover after {took:.2f} s > lease {ttl:g} s + 1 s")
        if ev.kind == "partition":
            cut = [t for t in ticks if t.replica == ev.old_leader and t.start_mono > ev.at_mono]
            if cut:
                last = cut[-1]
                if last.start_mono - ev.at_mono > timings.partition_stop_bound_s + 0.1:
                    verdict.violations.append(f"{ev.name}: cut leader still ticked {last.start_mono - ev.at_mono:.2f} s "
                                              f"after the cut (bound {timings.partition_stop_bound_s:g} s)")
                # etcd's own word on when the cut leader's term ended: the delete of its key.
                ended = next((at for at, deleted, _ in key_events if deleted and at > ev.at_mono), None)
                if ended is not None and (last.end_mono or last.start_mono) >= ended:
                    verdict.violations.append(f"{ev.name}: the cut leader was still ticking when etcd expired its lease")
        if ev.kind == "pause":
            thawed = [t for t in ticks if t.replica == ev.old_leader and t.start_mono > ev.at_mono]
            if thawed and thawed[0].token == next((t.token for t in ticks if t.replica == ev.old_leader), None):
                verdict.violations.append(f"{ev.name}: the thawed leader ticked on its old term")
    healed = ev.healed_at_mono or ev.at_mono
    bound = ttl + 3 + (2 if ev.kind == "etcd" else 0)  # an etcd member also needs a raft election
    if not any(healed < t.start_mono <= healed + bound for t in ticks):
        verdict.violations.append(f"{ev.name}: ticking did not resume within {bound:g} s after healing")


def missed_seconds(ticks: list[Tick]) -> int:
    """Seconds of real time with no tick, from the gaps between tick starts on the monotonic clock
    (slot numbers jump when a wall clock is stepped, real time does not)."""
    starts = [t.start_mono for t in ticks]
    return sum(max(0, round(b - a) - 1) for a, b in zip(starts, starts[1:]))


def judge(run: ScenarioRun, timings: Timings) -> Verdict:
    ticks = sorted(run.ticks, key=lambda t: t.start_mono)
    verdict = Verdict(run.name, [e.name for e in run.events], ticks=len(ticks))
    if not ticks:
        verdict.violations.append("nothing ticked")
        return verdict
    verdict.overlaps = len(overlaps(ticks))
    verdict.duplicate_slots = len(duplicate_slots(ticks))
    verdict.missed_seconds = missed_seconds(ticks)
    if verdict.overlaps:
        verdict.violations.append(f"{verdict.overlaps} overlapping tick(s), e.g. {overlaps(ticks)[0]}")
    if verdict.duplicate_slots:
        verdict.violations.append(f"{verdict.duplicate_slots} slot(s) ran twice: {duplicate_slots(ticks)[:5]}")
    if not tokens_grow(ticks):
        verdict.violations.append("a change of leader did not bring a larger fencing token")
    if run.stale_write_refused is False:
        verdict.violations.append("a write guarded by a stale token was not refused")
    if run.leaked_leases:
        verdict.violations.append(f"leases left in etcd: {run.leaked_leases[:3]}")
    for event in run.events:
        if event.kind != "skipped":
            _check_event(event, ticks, timings, verdict, run.key_events)
    return verdict
