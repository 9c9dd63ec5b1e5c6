"""The sharded run's verdict, group by group, from the ledger (every run of every job, written by the job itself),
the faults and etcd's watch of the groups' leader keys. Pure: evidence in, a Verdict out.

Per group (one job each): no slot run twice; no two runs of the job at once, across replicas; a larger fencing
token with each new leader. Per fault, for each group the hit replica led (an orphan): another replica ticks it
within the lease + 1 s, plus the campaign delay a member that is not the group's preferred owner waits (the bound
checked is the last-ranked member's: delay x (1 + 0.1 x (replicas - 1)); how many orphans needed the delay is
reported); not before the lease could lapse (a paused or cut replica is alive: nobody may revoke it); a cut
replica stops within two renewals or the margin, and before etcd drops its key; a thawed one runs nothing on its
old terms. The slots missed are counted (at each fault, and over the whole run), never judged.
"""
from __future__ import annotations

from dataclasses import dataclass

from singleton.chaos.harness import FaultEvent
from singleton.chaos.jobverdict import JobVerdict
from singleton.chaos.shardreplica import JobTick
from singleton.chaos.verdict import SLACK_S, Verdict
from singleton.core.timings import Timings
from singleton.dev.ledger import duplicate_slots, missed_slots, overlaps, tokens_grow

PAUSE_DELIVERY_S = 0.1  # a run may start between the harness noting the fault and the signal landing


@dataclass(frozen=True)
class KeyEvent:
    at: float  # monotonic
    group: str
    deleted: bool
    token: int  # the key's create revision
    replica: str  # the holder named in the value ("" for a delete)


@dataclass(frozen=True)
class ShardEvidence:
    groups: list[str]
    ticks: list[JobTick]
    events: list[FaultEvent]
    orphans: list[list[str]]  # per event: the groups its target led when it was hit
    key_events: list[KeyEvent]
    started: float
    stopping: float
    replicas: int


def takeover_bounds(timings: Timings, delay_s: float, replicas: int) -> tuple[float, float]:
    """(the preferred owner's bound, the last-ranked member's) for an orphaned group's first tick elsewhere."""
    base = timings.lease_ttl_s + 1 + SLACK_S
    return base, base + delay_s * (1 + 0.1 * max(0, replicas - 1))


def _pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def judge_sharded(ev: ShardEvidence, timings: Timings, delay_s: float) -> Verdict:
    name = ev.events[0].name if len(ev.events) == 1 else "+".join(e.name for e in ev.events) or "no fault"
    verdict = Verdict(name, [e.name for e in ev.events], ticks=len(ev.ticks))
    ticks_of: dict[str, list[JobTick]] = {g: [] for g in ev.groups}
    for t in sorted(ev.ticks, key=lambda t: t.start_mono):
        ticks_of.setdefault(t.job, []).append(t)
    for group, ticks in ticks_of.items():
        jv = JobVerdict(group, "every 1 s", "skip", runs=len(ticks))
        if not ticks:
            jv.violations.append("never ran")
        twice = duplicate_slots(ticks)
        jv.duplicate_slots = len(twice)
        if twice:
            jv.violations.append(f"{len(twice)} slot(s) ran twice: {twice[:5]}")
        crowded = overlaps(ticks)
        jv.overlaps = len(crowded)
        if crowded:
            a, b = crowded[0]
            jv.violations.append(f"{len(crowded)} run(s) started while another ran, e.g. slot {b.slot} on {b.replica} "
                                 f"(token {b.token}) beside slot {a.slot} on {a.replica} (token {a.token})")
        if not tokens_grow(ticks):
            jv.violations.append("a change of leader did not bring a larger fencing token")
        jv.most_at_once = 2 if crowded else 1 if ticks else 0
        jv.missed_instants = len(missed_slots(ticks))
        verdict.jobs.append(jv)
    for event, orphans in zip(ev.events, ev.orphans):
        _judge_fault(event, orphans, ticks_of, ev, timings, delay_s, verdict)
    for jv in verdict.jobs:
        verdict.overlaps += jv.overlaps
        verdict.duplicate_slots += jv.duplicate_slots
        verdict.missed_seconds += jv.missed_instants
        verdict.violations += [f"group {jv.job}: {v}" for v in jv.violations]
    verdict.terms = sum(1 for k in ev.key_events if not k.deleted)
    verdict.notes.append(f"{len(ev.groups)} groups, {verdict.ticks} runs, {verdict.terms} group terms won; "
                         f"{verdict.missed_seconds} slot(s) missed over the whole run (faults, start-up and "
                         f"rebalancing included)")
    return verdict


def _judge_fault(event: FaultEvent, orphans: list[str], ticks_of: dict[str, list[JobTick]], ev: ShardEvidence,
                 timings: Timings, delay_s: float, verdict: Verdict) -> None:
    old, at = event.old_leader, event.at_mono
    preferred_bound, bound = takeover_bounds(timings, delay_s, ev.replicas)
    lapses_after = timings.lease_ttl_s - timings.keepalive_interval_s - timings.renewal_timeout_s - SLACK_S
    took_all, releds, delayed, missed = [], [], 0, 0
    for group in orphans:
        jv = next(j for j in verdict.jobs if j.job == group)
        ticks = ticks_of.get(group, [])
        before = [t for t in ticks if t.replica == old and t.start_mono <= at]
        if not before:
            jv.notes.append(f"{event.name}: had not run on {old} before the fault")
            continue
        last = before[-1]
        new = next((t for t in ticks if t.start_mono > at and t.replica != old), None)
        if new is None:
            jv.violations.append(f"{event.name}: no takeover of the group")
            continue
        took = new.start_mono - at
        took_all.append(took)
        verdict.takeovers_s.append(took)
        verdict.takeovers_by_kind.setdefault(event.kind, []).append(took)
        ran = {t.slot for t in ticks}  # a cut replica runs on for a moment: its slots were not missed
        missed += sum(1 for slot in range(last.slot + 1, new.slot) if slot not in ran)
        relead = next((k.at - at for k in ev.key_events if k.group == group and not k.deleted and k.at > at
                       and k.replica != old), None)
        if relead is not None:
            releds.append(relead)
        if took > bound:
            jv.violations.append(f"{event.name}: first tick elsewhere {took:.2f} s after the fault > lease "
                                 f"{timings.lease_ttl_s:g} s + 1 s + campaign delay ({bound - SLACK_S:.2f} s)")
        elif took > preferred_bound:
            delayed += 1
        if event.kind in ("pause", "partition") and took < lapses_after:
            jv.violations.append(f"{event.name}: taken over {took:.2f} s after the fault, before the live "
                                 f"replica's lease could lapse ({lapses_after:.1f} s)")
        term = [t for t in ticks if t.replica == old and t.token == last.token and t.start_mono > at]
        if event.kind == "partition" and term:
            if term[-1].start_mono - at > timings.partition_stop_bound_s + 0.1:
                jv.violations.append(f"{event.name}: the cut replica still ran slot {term[-1].slot} "
                                     f"{term[-1].start_mono - at:.2f} s after the cut (bound "
                                     f"{timings.partition_stop_bound_s:g} s)")
            gone = next((k.at for k in ev.key_events if k.group == group and k.deleted and k.token == last.token),
                        None)
            if gone is not None and (term[-1].end_mono or term[-1].start_mono) >= gone:
                jv.violations.append(f"{event.name}: the cut replica was still running slot {term[-1].slot} when "
                                     f"etcd dropped its key")
        if event.kind == "pause":
            thawed = [t for t in term if t.start_mono > at + PAUSE_DELIVERY_S]
            if thawed:
                jv.violations.append(f"{event.name}: the thawed replica ran slot(s) {[t.slot for t in thawed][:5]} "
                                     f"on its old term (token {last.token})")
    if not took_all:
        verdict.notes.append(f"{event.name} on {old}: {len(orphans)} groups, none taken over")
        return
    relead_text = (f"; re-led in etcd (new key) p50 {_pct(releds, 50):.2f} / max {max(releds):.2f} s"
                   if releds else "")
    verdict.notes.append(
        f"{event.name} on {old}: {len(orphans)} orphaned groups; first tick elsewhere p50 {_pct(took_all, 50):.2f} / "
        f"p99 {_pct(took_all, 99):.2f} / max {max(took_all):.2f} s (bound: lease {timings.lease_ttl_s:g} + 1 s, "
        f"{bound - SLACK_S:.2f} s with the campaign delay, +{SLACK_S:g} s slack); {delayed} needed the delay"
        f"{relead_text}; {missed} slot(s) missed at this fault ({missed / len(took_all):.1f} per group)")
