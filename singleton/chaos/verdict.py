"""The invariants, checked on a scenario's evidence (ledger + fault events + etcd), never on replica claims."""
from __future__ import annotations

from dataclasses import dataclass, field

from singleton.dev.ledger import Tick, duplicate_slots, overlaps, tokens_grow
from singleton.chaos.compound import JOB_CANCEL_GRACE_S, JOB_TIMEOUT_S, PROBE_FAILURES
from singleton.chaos.harness import HISTORY_SIZE, FaultEvent, ScenarioRun
from singleton.chaos.jobverdict import JobVerdict, judge_jobs
from singleton.chaos.recordcheck import record_violations
from singleton.core.timings import Timings

SLACK_S = 0.5  # process scheduling on a busy 2-core machine
# A term that stands this long without a tick is a silent one: the ticker ticks within a second of winning.
SILENT_TERM_S = 2.0


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
    terms: int = 0  # leader-key terms during the scenario, as etcd saw them
    silent_terms: int = 0  # of which never ticked though they stood SILENT_TERM_S or longer
    history_entries: int = 0  # runs in etcd's history ring at the end
    violations: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # documented windows, shown in the report, not violations
    jobs: list[JobVerdict] = field(default_factory=list)  # `--jobs`: each job's own verdict (its counts summed above)

    @property
    def held(self) -> bool:
        return not self.violations


def _first_other(ticks: list[Tick], after: float, old: str | None) -> Tick | None:
    return next((t for t in ticks if t.start_mono > after and t.replica != old), None)


def _record_takeover(verdict: Verdict, ev: FaultEvent, took_s: float) -> None:
    """One takeover's time, in the run's list and in its fault kind's."""
    verdict.takeovers_s.append(took_s)
    verdict.takeovers_by_kind.setdefault(ev.kind, []).append(took_s)


def _check_event(ev: FaultEvent, ticks: list[Tick], timings: Timings, verdict: Verdict, run: ScenarioRun) -> None:
    ttl, key_events = timings.lease_ttl_s, run.key_events
    new = _first_other(ticks, ev.at_mono, ev.old_leader)
    if ev.kind == "graceful":
        old_slots = [t.slot for t in ticks if t.replica == ev.old_leader]
        if new is None or not old_slots:
            verdict.violations.append(f"{ev.name}: no takeover")
            return
        _record_takeover(verdict, ev, new.start_mono - ev.at_mono)
        old_last = max((t for t in ticks if t.replica == ev.old_leader and t.start_mono <= ev.at_mono),
                       key=lambda t: t.start_mono, default=None)
        # A successor whose wall clock is ahead numbers its first slot by that clock: the numbers jump by the
        # clocks' difference (from the ledger: wall minus monotonic of both ticks), the job does not stall.
        ahead_s = 0.0 if old_last is None else max(0.0, (new.start_wall - old_last.start_wall)
                                                    - (new.start_mono - old_last.start_mono))
        jumped = new.slot - max(old_slots) - 1
        if run.jobs:
            pass  # slot numbers of many schedules: each job's instants are judged on its own (chaos/jobverdict.py)
        elif jumped < 0 or jumped > ahead_s + SLACK_S:
            verdict.violations.append(f"{ev.name}: graceful handover missed {jumped} s")
        elif jumped:
            verdict.notes.append(f"{ev.name}: slot numbers jumped by {jumped} at the handover: {new.replica}'s wall "
                                 f"clock is {ahead_s:.1f} s ahead of {ev.old_leader}'s (no second of real time lost)")
        # Slot numbers follow the clocks; real time is the monotonic gap (a stepped clock can hide a stall).
        # (With a jobs file the ticks are many schedules' runs, and a graceful stop keeps them going while a slow
        # run drains: each job's own instants say whether the handover lost any, chaos/jobverdict.py.)
        last_old = old_last.start_mono if old_last is not None else ev.at_mono
        if new.start_mono - last_old > 1 + SLACK_S and not run.jobs:
            verdict.violations.append(f"{ev.name}: the successor first ticked {new.start_mono - last_old:.2f} s "
                                      f"(real time) after the old leader's last tick (bound 1 s)")
        skew_s = run.clock_offsets_s.get(ev.old_leader or "", 0.0) - run.clock_offsets_s.get(new.replica, 0.0)
        if abs(skew_s) >= SKEW_MUST_WARN_S and not _warned_skew(run, new):
            verdict.violations.append(f"{ev.name}: {new.replica} took over from {ev.old_leader}, whose clock is "
                                      f"{skew_s:+g} s from its own, without a 'clock skew' warning")
    elif ev.kind == "hung":
        _check_hung(ev, ticks, timings, verdict, run)
    elif ev.kind == "revoke":
        _check_revoked(ev, ticks, verdict, new)
    elif ev.kind in ("crash", "pause", "partition"):
        if new is None:
            verdict.violations.append(f"{ev.name}: no takeover")
            return
        took = new.start_mono - ev.at_mono
        _record_takeover(verdict, ev, took)
        if ev.kind == "crash" and run.fast_failover:
            if took > FAST_CRASH_BOUND_S + SLACK_S:
                verdict.violations.append(f"{ev.name}: takeover after {took:.2f} s > {FAST_CRASH_BOUND_S:g} s "
                                          f"(fast failover)")
        elif took > ttl + 1 + SLACK_S:
            verdict.violations.append(f"{ev.name}: takeover after {took:.2f} s > lease {ttl:g} s + 1 s")
        # A live leader's lease lapses no sooner than this after its last renewal: a faster takeover from a
        # paused or cut-off leader means a standby revoked a lease it should not have (a false death).
        lapses_after = ttl - timings.keepalive_interval_s - timings.renewal_timeout_s - SLACK_S
        if ev.kind in ("pause", "partition") and took < lapses_after:
            verdict.violations.append(f"{ev.name}: takeover after {took:.2f} s, before the lease could lapse "
                                      f"({lapses_after:.1f} s): was a live leader's lease revoked?")
        if ev.kind in ("pause", "partition") and _sensed_dead(run, ev.old_leader):
            verdict.violations.append(f"{ev.name}: a standby took the live {ev.old_leader} for dead and revoked "
                                      f"its lease")
        if ev.kind == "partition":
            # The cut term's ticks only: after healing, the same replica may win a later term fairly.
            term = next((t.token for t in reversed(ticks) if t.replica == ev.old_leader and t.start_mono <= ev.at_mono),
                        None)
            cut = [t for t in ticks if t.replica == ev.old_leader and t.token == term and t.start_mono > ev.at_mono]
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
            # From a run record, a slot claimed before the pause (claims go ahead of their instant) and never
            # reported reads as an unfinished run at its instant: not a run of the thawed leader.
            claimed_before = (lambda t: (run.user_job is not None or bool(run.jobs)) and not t.finished
                              and t.start_mono - ev.at_mono <= CLAIM_AHEAD_BOUND_S)
            thawed = [t for t in ticks if t.replica == ev.old_leader and t.start_mono > ev.at_mono
                      and not claimed_before(t)]
            if thawed and thawed[0].token == next((t.token for t in ticks if t.replica == ev.old_leader), None):
                verdict.violations.append(f"{ev.name}: the thawed leader ticked on its old term")
    healed = ev.healed_at_mono or ev.at_mono
    bound = ttl + 3 + (2 if ev.kind == "etcd" else 0)  # an etcd member also needs a raft election
    if not any(healed < t.start_mono <= healed + bound for t in ticks):
        verdict.violations.append(f"{ev.name}: ticking did not resume within {bound:g} s after healing")


def _sensed_dead(run: ScenarioRun, replica: str | None) -> bool:
    """A standby's log says it sensed `replica`'s death (fast failover revoked its lease)."""
    line = f"leader {replica} is dead"
    return any(line in log.read_text(errors="replace") for log in run.workdir.glob("*.log"))


def _check_revoked(ev: FaultEvent, ticks: list[Tick], verdict: Verdict, new: Tick | None) -> None:
    """A live leader whose lease was revoked by hand runs no slot claimed after the revoke, and a standby takes
    over at once (the key went with the lease)."""
    if new is None:
        verdict.violations.append(f"{ev.name}: no takeover")
        return
    took = new.start_mono - ev.at_mono
    _record_takeover(verdict, ev, took)
    if took > FAST_CRASH_BOUND_S + SLACK_S:
        verdict.violations.append(f"{ev.name}: takeover after {took:.2f} s > {FAST_CRASH_BOUND_S:g} s")
    term = next((t.token for t in reversed(ticks) if t.replica == ev.old_leader and t.start_mono <= ev.at_mono), None)
    after = [t for t in ticks if t.replica == ev.old_leader and t.token == term and t.start_mono > ev.at_mono]
    # Only the slot claimed just before the revoke (claims go ~0.25 s ahead of their slot) may still start.
    late = [t for t in after if t.start_mono - (ev.healed_at_mono or ev.at_mono) > CLAIM_AHEAD_BOUND_S]
    if len(after) > 1 or late:
        verdict.violations.append(f"{ev.name}: the revoked leader ran slot(s) {[t.slot for t in after]} after its "
                                  f"lease was revoked")


# A crash costs this with fast failover: sensing (milliseconds), revoke, campaign, up to a second to the next slot.
FAST_CRASH_BOUND_S = 1.5
CLAIM_AHEAD_BOUND_S = 0.25 + SLACK_S

# Replicas started with clocks this far apart (ReplicaOptions.clock_offsets_s) must log the skew at a handover
# (the replica warns above core.runs.SKEW_WARNING_S; the handover measures it to within the watch's delivery).
SKEW_MUST_WARN_S = 1.0


def _warned_skew(run: ScenarioRun, new: Tick) -> bool:
    log = run.workdir / f"{new.replica}.log"
    text = log.read_text(errors="replace") if log.exists() else ""
    return any("clock skew:" in line and f"token={new.token}" in line for line in text.splitlines())


def missed_seconds(ticks: list[Tick]) -> int:
    """Seconds of real time with no tick, from the gaps between tick starts on the monotonic clock
    (slot numbers jump when a wall clock is stepped, real time does not)."""
    starts = [t.start_mono for t in ticks]
    return sum(max(0, round(b - a) - 1) for a, b in zip(starts, starts[1:]))


def judge(run: ScenarioRun, timings: Timings) -> Verdict:
    ticks = sorted(run.ticks, key=lambda t: t.start_mono)
    verdict = Verdict(run.name, [e.name for e in run.events], ticks=len(ticks))
    _check_terms(run, ticks, timings, verdict)
    if not ticks:
        verdict.violations.append("nothing ticked")
        return verdict
    if run.jobs:
        _judge_jobs(run, timings, verdict)
    else:
        _judge_ticks(ticks, verdict)
    if not tokens_grow(ticks):
        verdict.violations.append("a change of leader did not bring a larger fencing token")
    if run.stale_write_refused is False:
        verdict.violations.append("a write guarded by a stale token was not refused")
    if run.leaked_leases:
        verdict.violations.append(f"leases left in etcd: {run.leaked_leases[:3]}")
    for event in run.events:
        if event.kind != "skipped":
            _check_event(event, ticks, timings, verdict, run)
    if not run.jobs:
        _check_record(run, ticks, verdict)
    return verdict


def _judge_ticks(ticks: list[Tick], verdict: Verdict) -> None:
    """One job (the ledger job, or `--job`): its ticks are the evidence."""
    verdict.overlaps = len(overlaps(ticks))
    verdict.duplicate_slots = len(duplicate_slots(ticks))
    verdict.missed_seconds = missed_seconds(ticks)
    if verdict.overlaps:
        verdict.violations.append(f"{verdict.overlaps} overlapping tick(s), e.g. {overlaps(ticks)[0]}")
    if verdict.duplicate_slots:
        verdict.violations.append(f"{verdict.duplicate_slots} slot(s) ran twice: {duplicate_slots(ticks)[:5]}")


def _judge_jobs(run: ScenarioRun, timings: Timings, verdict: Verdict) -> None:
    """`--jobs`: every job from its own record and at its own schedule; the run fails if any job's verdict does.
    (All the jobs' runs together are the ticks the checks of terms, tokens and takeovers above look at.)"""
    if run.history is None:
        verdict.violations.append(f"the jobs' run records could not be read: {run.history_error or 'not read'}")
        return
    verdict.history_entries = len(run.history)
    verdict.jobs = judge_jobs(run, timings, FAST_CRASH_BOUND_S)
    for job in verdict.jobs:
        verdict.overlaps += job.overlaps
        verdict.duplicate_slots += job.duplicate_slots
        verdict.missed_seconds += job.missed_instants
        verdict.violations += [f"job {job.job}: {v}" for v in job.violations]
        verdict.notes += [f"job {job.job}: {n}" for n in job.notes]


def _check_record(run: ScenarioRun, ticks: list[Tick], verdict: Verdict) -> None:
    """etcd's history of the runs must tell the ledger's story (see chaos/recordcheck.py)."""
    if run.history is None:
        verdict.violations.append(f"the run record could not be read: {run.history_error or 'not read'}")
        return
    verdict.history_entries = len(run.history)
    if run.user_job:  # the user's job raising is what they came to find out about
        failed = [e for e in run.history if e.outcome == "failed"]
        if failed:
            verdict.violations.append(f"{len(failed)} run(s) of {run.user_job} failed, e.g. slot {failed[0].slot} "
                                      f"on {failed[0].replica_id}: {failed[0].error or 'no error text'}")
    verdict.violations += [f"run record: {p}" for p in record_violations(ticks, run.history, run.run_record,
                                                                          HISTORY_SIZE)]


def term_spans(run: ScenarioRun) -> list[tuple[int, float, float]]:
    """(token, put, end) of every term of the leader key up to the scenario's end, from etcd's watch.
    A delete event carries no create revision: it ends whichever term stands."""
    stop = run.stopping_mono if run.stopping_mono is not None else float("inf")
    spans: list[tuple[int, float, float]] = []
    current: tuple[int, float] | None = None
    for at, deleted, token in run.key_events:
        if current is not None and (deleted or token != current[0]):
            spans.append((current[0], current[1], at))
            current = None
        if not deleted and current is None and at < stop:
            current = (token, at)
    if current is not None:
        spans.append((current[0], current[1], stop))
    return spans


def _check_terms(run: ScenarioRun, ticks: list[Tick], timings: Timings, verdict: Verdict) -> None:
    """No flapping: every term that stood long enough to tick, ticked. Terms won while etcd itself was
    being broken are left out (the harness's watch may miss their end)."""
    ticked = {t.token for t in ticks}
    troubled = [(e.at_mono, (e.healed_at_mono or e.at_mono) + timings.lease_ttl_s + 3) for e in run.events
                if e.kind == "etcd"]
    spans = term_spans(run)
    silent = [(token, end - put) for token, put, end in spans if token not in ticked and end - put >= SILENT_TERM_S
              and not any(a <= put <= b for a, b in troubled)]
    verdict.terms, verdict.silent_terms = len(spans), len(silent)
    if silent:
        verdict.violations.append(f"silent terms (flapping, or a leader idle on its lease): {len(silent)} of "
                                  f"{len(spans)} terms never ticked, though they stood "
                                  f"{', '.join(f'{d:.1f}' for _, d in silent[:5])} s")


def _check_hung(ev: FaultEvent, ticks: list[Tick], timings: Timings, verdict: Verdict, run: ScenarioRun) -> None:
    """A job that ignores its cancel is the one window no lease can close: the replica must stop ticking,
    keep its key until its lease lapses (so no standby starts beside the job early), and be restarted."""
    hung = next((t for t in ticks if t.hung and t.start_mono > ev.at_mono), None)
    if hung is None:
        verdict.violations.append(f"{ev.name}: the armed hang never started (harness)")
        return

    def rel(at: float) -> str:  # seconds into the run, as the timeline shows them
        return f"+{at - run.started_mono:.2f} s"

    later = [t for t in ticks if t.pid == hung.pid and t.start_mono > hung.start_mono]
    if later:
        verdict.violations.append(f"{ev.name}: the hung replica started {len(later)} more tick(s), slot {later[0].slot}")
    stood_again = [at for at, deleted, token in run.key_events
                   if not deleted and at > hung.start_mono and run.holders.get(token) == hung.replica]
    if stood_again:
        verdict.violations.append(f"{ev.name}: the hung replica won a term again while its job still ran")
    killed = run.kills.get(hung.replica)
    first_503 = next((at for at, replica, status in run.probes if replica == hung.replica and status == 503), None)
    if killed is None:
        verdict.violations.append(f"{ev.name}: /healthz never answered 503 {PROBE_FAILURES} times in a row: no restart")
    stepped_down = hung.start_mono + JOB_TIMEOUT_S + JOB_CANCEL_GRACE_S  # as configured
    new = _first_other(ticks, hung.start_mono, hung.replica)
    key_gone = next((at for at, deleted, _ in run.key_events if deleted and at > hung.start_mono), None)
    if new is None:
        verdict.violations.append(f"{ev.name}: no takeover")
        return
    took = new.start_mono - stepped_down
    _record_takeover(verdict, ev, took)
    # etcd's account at the first 503: a replica that revoked or deleted at its step-down no longer holds the key.
    before = [(deleted, token) for at, deleted, token in run.key_events if first_503 is not None and at <= first_503]
    if first_503 is not None and (not before or before[-1][0] or run.holders.get(before[-1][1]) != hung.replica):
        verdict.violations.append(f"{ev.name}: the hung replica no longer held its key when it first answered 503: "
                                  f"it gave up its lease at the step-down, so a standby may start beside its job")
    if key_gone is None or new.start_mono < key_gone:
        verdict.violations.append(f"{ev.name}: a standby ticked before the hung leader's key was gone")
    else:
        # The lease lapses within its TTL of the step-down (+ etcd's 0.5 s expiry sweep); the standby, woken
        # by the delete, ticks at its next whole second.
        if key_gone - stepped_down > timings.lease_ttl_s + 1:
            verdict.violations.append(f"{ev.name}: the hung leader's key went {key_gone - stepped_down:.2f} s after "
                                      f"its step-down > lease {timings.lease_ttl_s:g} s + 1 s")
        if new.start_mono - key_gone > 1 + SLACK_S:
            verdict.violations.append(f"{ev.name}: the standby ticked {new.start_mono - key_gone:.2f} s after the "
                                      f"key went (bound 1 s)")
    job_end = killed if killed is not None else float("inf")
    alongside = max(0.0, min(job_end, run.stopping_mono or job_end) - new.start_mono)
    verdict.notes.append(
        f"{ev.name}: slot {hung.slot} hung on {hung.replica} from {rel(hung.start_mono)} and ignored its cancel "
        f"(the documented window: a job that ignores cancel runs until its process dies); step-down due at "
        f"{rel(stepped_down)}; first /healthz 503 at {rel(first_503) if first_503 else 'never'}; killed by the "
        f"liveness probe at {rel(killed) if killed else 'never'}; key gone at {rel(key_gone) if key_gone else 'never'}; "
        f"{new.replica}'s first tick at {rel(new.start_mono)}; the hung job ran alongside other ticks for "
        f"{alongside:.2f} s")
