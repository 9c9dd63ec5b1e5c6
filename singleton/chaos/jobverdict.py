"""Every job of a jobs file judged on its own, from its run record and history in etcd (`singleton chaos --jobs`):
no slot run twice, no more runs at once than the job's overlap policy allows, and no instant of the job's own
schedule lost at a handover beyond what the fault's bound allows.

`judge_job` is pure: history entries, the faults (monotonic times, mapped onto the replicas' wall clock: one
host) and the job's spec in, a JobVerdict out; `judge_jobs` applies it to a scenario's evidence.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from singleton.chaos.recordcheck import record_violations
from singleton.chaos.recordticks import ticks_from_record
from singleton.core.jobspec import JobSpec
from singleton.core.timings import Timings
from singleton.v1.run_pb2 import RunEntry, RunRecord

if TYPE_CHECKING:
    from singleton.chaos.harness import ScenarioRun

RAN = ("ok", "failed", "cancelled", "unknown")  # runs that started (unknown: its leader died before reporting)
# Claimed slots that did not run for a reason the job's policy or an operator gives (not lost by a handover).
EXPLAINED = ("skipped", "pool_full", "paused", "coalesced")
SLACK_S = 0.5  # process scheduling on a busy machine
MAX_INSTANTS = 10_000  # a gap is walked instant by instant: bounded


@dataclass(frozen=True)
class Fault:
    """A fault as the per-job judge needs it: its kind, wall time, the leader it hit, and the takeover bound."""

    name: str
    kind: str
    at_wall: float
    old_leader: str | None
    bound_s: float  # crash/pause/partition: instants due later than this after the fault must run


@dataclass(frozen=True)
class Run:
    slot: int
    replica: str
    start: float  # wall seconds
    end: float | None  # None: not known (an unknown run: its leader died); inf: the claimed one, still going


@dataclass
class JobVerdict:
    job: str
    schedule: str
    policy: str
    runs: int = 0
    duplicate_slots: int = 0
    overlaps: int = 0  # runs that started while the job's limit of runs was already going
    most_at_once: int = 0
    missed_instants: int = 0  # at the faults' handovers, allowed ones included
    violations: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def held(self) -> bool:
        return not self.violations


def job_runs(spec: JobSpec, entries: Iterable[RunEntry], record: RunRecord | None, until_wall: float) -> list[Run]:
    """The runs that started: every history entry that ran, plus the standing claim once its instant passed."""
    entries = list(entries)
    runs = [Run(e.slot, e.replica_id, e.started_at_unix_s or spec.schedule.instant(e.slot),
                e.started_at_unix_s + e.duration_s if e.outcome != "unknown" and e.started_at_unix_s else None)
            for e in entries if e.outcome in RAN]
    if record is not None and record.seq not in {e.seq for e in entries} \
            and spec.schedule.instant(record.slot) <= until_wall:
        runs.append(Run(record.slot, record.replica_id, spec.schedule.instant(record.slot), float("inf")))
    return sorted(runs, key=lambda r: (r.start, r.slot))


def judge_job(spec: JobSpec, entries: list[RunEntry], record: RunRecord | None, faults: list[Fault],
              until_wall: float) -> JobVerdict:
    """`until_wall`: when the scenario stopped (instants after it are nobody's to run)."""
    policy = "skip" if spec.overlap == "skip" else f"allow {spec.max_instances}"
    verdict = JobVerdict(spec.name, spec.schedule.describe(), policy)
    runs = job_runs(spec, entries, record, until_wall)
    verdict.runs = len(runs)
    by_slot: dict[int, list[Run]] = {}
    for r in runs:
        by_slot.setdefault(r.slot, []).append(r)
    twice = sorted(s for s, found in by_slot.items() if len(found) > 1)
    verdict.duplicate_slots = len(twice)
    if twice:
        verdict.violations.append(f"{len(twice)} slot(s) ran twice: "
                                  + ", ".join(f"{s} ({'/'.join(r.replica for r in by_slot[s])})" for s in twice[:5]))
    _check_overlap(spec, runs, verdict)
    for fault in faults:
        _check_handover(spec, entries, runs, fault, until_wall, verdict)
    return verdict


def _check_overlap(spec: JobSpec, runs: list[Run], verdict: JobVerdict) -> None:
    """A run whose end is not known counts only at its start (its leader died: it ended then, or before)."""
    limit = spec.max_instances if spec.overlap == "allow" else 1
    crowded = []
    for i, r in enumerate(runs):
        going = [o for o in runs[:i] if o.end is not None and o.end > r.start]
        verdict.most_at_once = max(verdict.most_at_once, len(going) + 1)
        if len(going) >= limit:
            crowded.append((r, going))
    verdict.overlaps = len(crowded)
    if crowded:
        r, going = crowded[0]
        verdict.violations.append(f"{len(crowded)} run(s) started while {limit} run(s) of the job were going "
                                  f"(policy {verdict.policy}), e.g. slot {r.slot} on {r.replica} beside slot(s) "
                                  f"{', '.join(f'{o.slot} on {o.replica}' for o in going)}")


def _check_handover(spec: JobSpec, entries: list[RunEntry], runs: list[Run], fault: Fault, until_wall: float,
                    verdict: JobVerdict) -> None:
    """The job's instants due after the fault, up to the successor's first run, that nobody ran and no policy
    explains: a graceful handover loses none; a crash, pause or cut only those due within the fault's takeover
    bound."""
    before = [r for r in runs if r.start <= fault.at_wall]
    if not before:
        verdict.notes.append(f"{fault.name}: the job had not run before the fault: no handover to judge")
        return
    last = max(r.slot for r in before)
    successor = min((r.slot for r in runs if r.replica != fault.old_leader and r.start > fault.at_wall
                     and r.slot > last), default=None)
    ran = {r.slot for r in runs}
    explained = {e.slot for e in entries if e.outcome in EXPLAINED}
    for e in entries:  # a coalesced run stood in for the slots before it
        if e.coalesced_from and e.outcome in RAN:
            explained.update(s for s in range(e.coalesced_from, e.slot))
    missed, slot = [], spec.schedule.slot_after(last)
    for _ in range(MAX_INSTANTS):
        due = spec.schedule.instant(slot)
        if (successor is not None and slot >= successor) or (successor is None and due > until_wall - 1.0):
            break
        overrun = spec.overlap == "skip" and any(r.start <= due and r.end is not None and due < r.end for r in runs)
        # Instants due before the fault were the old leader's, still leading (a herd's outage came before its kill).
        if due > fault.at_wall and slot not in ran and slot not in explained and not overrun:
            missed.append((slot, due))
        slot = spec.schedule.slot_after(slot)
    verdict.missed_instants += len(missed)
    if not missed:
        return
    shown = ", ".join(f"{s} ({due - fault.at_wall:+.2f} s)" for s, due in missed[:5])
    if fault.kind == "graceful":
        verdict.violations.append(f"{fault.name}: graceful handover missed {len(missed)} instant(s) of the job: "
                                  f"slot(s) {shown} after the fault")
        return
    late = [(s, due) for s, due in missed if due > fault.at_wall + fault.bound_s + SLACK_S]
    if late:
        verdict.violations.append(f"{fault.name}: {len(late)} instant(s) due more than {fault.bound_s:g} s (+"
                                  f"{SLACK_S:g}) after the fault never ran: slot(s) "
                                  f"{', '.join(f'{s} ({due - fault.at_wall:+.2f} s)' for s, due in late[:5])}")
    else:
        verdict.notes.append(f"{fault.name}: {len(missed)} instant(s) lost within the {fault.bound_s:g} s takeover "
                             f"bound: slot(s) {shown}")


def judge_jobs(run: ScenarioRun, timings: Timings, crash_bound_s: float) -> list[JobVerdict]:
    """Each job of the run's jobs file, from its own record: the checks above, the record's own consistency
    (chaos/recordcheck.py) and no failed run."""
    faults = [Fault(ev.name, ev.kind, ev.at_mono + run.wall_minus_mono, ev.old_leader,
                    crash_bound_s if ev.kind == "crash" and run.fast_failover else timings.lease_ttl_s + 1)
              for ev in run.events if ev.kind in ("graceful", "crash", "pause", "partition")]
    until = (run.stopping_mono if run.stopping_mono is not None else run.started_mono) + run.wall_minus_mono
    verdicts = []
    for spec in run.jobs:
        record, entries = run.job_records.get(spec.name, (None, []))
        verdict = judge_job(spec, entries, record, faults, until)
        ticks = ticks_from_record(record, entries, run.wall_minus_mono, until, False, spec.schedule)
        verdict.violations += [f"run record: {p}" for p in record_violations(ticks, entries, record,
                                                                              run.history_size)]
        failed = [e for e in entries if e.outcome == "failed"]
        if failed:
            verdict.violations.append(f"{len(failed)} run(s) failed, e.g. slot {failed[0].slot} on "
                                      f"{failed[0].replica_id}: {failed[0].error or 'no error text'}")
        if not ticks:
            verdict.violations.append("never ran")
        verdicts.append(verdict)
    return verdicts
