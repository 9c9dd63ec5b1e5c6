"""`singleton chaos --jobs jobs.toml`: every job of a jobs file judged from its own run record, at its own schedule.
Pure tests of the per-job judge on hand-made histories (a duplicate, an overlap beyond the policy and a missed
instant are each flagged; a clean history, and instants a policy explains, are not), the harness's history sizing,
the CLI's refusals, and one real-etcd run of the suite on a jobs file of four jobs."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from singleton.chaos.harness import FaultEvent, ScenarioRun, history_size_for
from singleton.chaos.jobverdict import Fault, judge_job
from singleton.chaos.recordticks import ticks_from_record
from singleton.chaos.verdict import judge
from singleton.core.jobspec import JobSpec, build_job_spec
from singleton.core.timings import FAST
from singleton.v1.run_pb2 import RunEntry, RunRecord

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "chaos-my-job"
HALF = build_job_spec("half", every=0.5)
BASE_SLOT = 3_600_000_000  # slot k of `every 0.5 s` is due at k / 2 (Unix seconds)


def e(seq: int, slot: int, replica: str = "r0", took: float = 0.05, outcome: str = "ok", spec: JobSpec = HALF,
      token: int | None = None, late_s: float = 0.001) -> RunEntry:
    return RunEntry(seq=seq, slot=slot, replica_id=replica, fencing_token=token or (5 if replica == "r0" else 9),
                    started_at_unix_s=spec.schedule.instant(slot) + late_s if outcome != "unknown" else 0.0,
                    duration_s=took, outcome=outcome)


def series(spec: JobSpec, slots: list[int], handover_at: int | None = None) -> list[RunEntry]:
    """Runs of `slots`, on r0 up to `handover_at`, then on r1."""
    return [e(i + 1, s, "r0" if handover_at is None or s < handover_at else "r1", spec=spec)
            for i, s in enumerate(slots)]


def graceful(at_wall: float) -> Fault:
    return Fault("sigterm r0", "graceful", at_wall, "r0", 0.0)


def test_a_clean_history_with_a_graceful_handover_holds() -> None:
    slots = list(range(BASE_SLOT, BASE_SLOT + 12))
    entries = series(HALF, slots, handover_at=BASE_SLOT + 6)
    fault = graceful(HALF.schedule.instant(BASE_SLOT + 5) + 0.2)
    verdict = judge_job(HALF, entries, RunRecord(seq=12, slot=slots[-1]), [fault], until_wall=slots[-1] / 2 + 2)
    assert verdict.held, verdict.violations
    assert (verdict.runs, verdict.duplicate_slots, verdict.overlaps, verdict.missed_instants) == (12, 0, 0, 0)


def test_a_duplicate_an_overlap_and_a_missed_instant_are_each_flagged() -> None:
    # SIGTERM after slot +5; r0 drains through slot +6, nobody runs +7, r1 takes over at +8.
    slots = [s for s in range(BASE_SLOT, BASE_SLOT + 12) if s != BASE_SLOT + 7]
    entries = series(HALF, slots, handover_at=BASE_SLOT + 8)
    entries.append(e(20, BASE_SLOT + 3, "r1"))  # slot +3 again, by the standby
    entries[1] = e(2, BASE_SLOT + 1, took=0.7)  # runs into slot +2's run: two runs of a skip job at once
    fault = graceful(HALF.schedule.instant(BASE_SLOT + 5) + 0.2)
    verdict = judge_job(HALF, entries, None, [fault], until_wall=slots[-1] / 2 + 2)
    assert not verdict.held
    assert verdict.duplicate_slots == 1 and any(f"{BASE_SLOT + 3} (r0/r1)" in v for v in verdict.violations)
    assert verdict.overlaps >= 1 and any("policy skip" in v for v in verdict.violations)
    assert verdict.missed_instants == 1
    assert any(v.startswith("sigterm r0: graceful handover missed 1 instant") and str(BASE_SLOT + 7) in v
               for v in verdict.violations)


def test_overlap_allow_is_judged_against_max_instances() -> None:
    allow = build_job_spec("slow", every=1, overlap="allow", max_instances=2)
    two = [e(1, 100, took=1.5, spec=allow), e(2, 101, took=0.1, spec=allow), e(3, 102, spec=allow)]
    assert judge_job(allow, two, None, [], until_wall=110).held
    three = [e(1, 100, took=2.5, spec=allow), e(2, 101, took=1.5, spec=allow), e(3, 102, spec=allow)]
    verdict = judge_job(allow, three, None, [], until_wall=110)
    assert verdict.overlaps == 1 and verdict.most_at_once == 3 and "2 run(s) of the job were going" in \
        verdict.violations[0]


def test_instants_the_policy_explains_are_not_missed() -> None:
    # Slot +7 was overrun by slot +6's long run (skip policy); slot +8 was paused by an operator.
    slots = [s for s in range(BASE_SLOT, BASE_SLOT + 12) if s not in (BASE_SLOT + 7, BASE_SLOT + 8)]
    entries = series(HALF, slots, handover_at=BASE_SLOT + 9)
    entries[6] = e(7, BASE_SLOT + 6, took=0.9)
    entries.append(e(30, BASE_SLOT + 8, outcome="paused"))
    fault = graceful(HALF.schedule.instant(BASE_SLOT + 6) + 0.95)
    verdict = judge_job(HALF, entries, None, [fault], until_wall=slots[-1] / 2 + 2)
    assert verdict.held, verdict.violations
    assert verdict.missed_instants == 0


def test_a_crash_may_cost_the_instants_within_its_bound_only() -> None:
    cron = build_job_spec("cron", cron="*/2 * * * * *")
    start = 1_800_000_000  # an even second
    crash_at = start + 6.1
    within = [start, start + 2, start + 4, start + 6, start + 10, start + 12]  # +8 lost: due 1.9 s after the crash
    entries = series(cron, within, handover_at=start + 7)
    entries[3] = e(4, start + 6, outcome="unknown", spec=cron)  # the crashed leader's last run
    crash = Fault("sigkill r0", "crash", crash_at, "r0", 1.5)
    ok = judge_job(cron, entries, None, [crash], until_wall=start + 14)
    assert ok.held, ok.violations
    assert ok.missed_instants == 1 and any(str(start + 8) in n for n in ok.notes)
    beyond = series(cron, [start, start + 2, start + 4, start + 6, start + 12], handover_at=start + 7)
    late = judge_job(cron, beyond, None, [crash], until_wall=start + 14)
    assert late.missed_instants == 2
    assert any(f"{start + 10} (+3.90 s)" in v for v in late.violations) and str(start + 8) not in late.violations[0]


def test_instants_due_before_the_fault_are_not_the_fault_s() -> None:
    """herd: every replica killed (an outage of its own), ten new ones, then their leader is killed before the
    job's first instant under it: the outage's instants are not the kill's to lose."""
    start = 1_800_000_000
    entries = series(JobSpec("sec"), [start, start + 1, start + 11, start + 12], handover_at=start + 11)
    kill = Fault("herd-sigkill-leader", "crash", start + 9.7, "r0", 1.5)
    verdict = judge_job(JobSpec("sec"), entries, None, [kill], until_wall=start + 14)
    # Slots +2..+9 fell in the outage before the kill; +10, due 0.3 s after it, is the kill's (within its bound).
    assert verdict.held and verdict.missed_instants == 1 and str(start + 10) in verdict.notes[0], verdict


def test_judge_reports_every_job_of_a_scenario_and_fails_on_any() -> None:
    wall_minus_mono = 1_700_000_000.0
    good, bad = build_job_spec("good", every=0.5), build_job_spec("bad", every=1)
    start = BASE_SLOT // 2  # Unix second of the half-second job's first slot
    good_entries = series(good, list(range(BASE_SLOT, BASE_SLOT + 12)), handover_at=BASE_SLOT + 6)
    bad_entries = series(bad, [start, start + 1, start + 2, start + 4, start + 5], handover_at=start + 3)
    run = ScenarioRun("sigterm-leader", Path("."), "ns", started_mono=start - wall_minus_mono - 1,
                      jobs_file="jobs.toml", jobs=[good, bad], wall_minus_mono=wall_minus_mono)
    run.job_records = {"good": (RunRecord(seq=12, slot=BASE_SLOT + 11, fencing_token=9), good_entries),
                       "bad": (RunRecord(seq=5, slot=start + 5, fencing_token=9), bad_entries)}
    run.history = good_entries + bad_entries
    run.ticks = [t for spec, (record, entries) in zip(run.jobs, run.job_records.values())
                 for t in ticks_from_record(record, entries, wall_minus_mono, start + 9, False, spec.schedule)]
    run.events = [FaultEvent("sigterm r0", "graceful", start + 2.7 - wall_minus_mono, "r0", old_leader="r0")]
    run.stopping_mono = start + 8 - wall_minus_mono
    verdict = judge(run, FAST)
    assert [(j.job, j.held) for j in verdict.jobs] == [("good", True), ("bad", False)]
    assert verdict.missed_seconds == 1
    assert [v for v in verdict.violations if v.startswith("job ")] == \
        [f"job bad: sigterm r0: graceful handover missed 1 instant(s) of the job: slot(s) {start + 3} (+0.30 s) "
         f"after the fault"]


def test_the_history_ring_is_sized_for_the_fastest_job() -> None:
    assert history_size_for([]) == 1000
    assert history_size_for([build_job_spec("a", cron="*/2 * * * * *")]) == 1000
    assert history_size_for([build_job_spec("a", every=5), build_job_spec("b", every=0.1)]) == 6000


def _chaos(*args: str, cwd: Path = EXAMPLE, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SINGLETON_")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    return subprocess.run([sys.executable, "-m", "singleton", "chaos", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("args, expected", [
    (["--job", "my_jobs.jobs:every_second", "--jobs", "jobs.toml"], "--job and --jobs exclude each other"),
    (["--jobs", "missing.toml"], "cannot read jobs file missing.toml"),
    (["--jobs", "jobs.toml", "--scenarios", "hung-job"], "unknown scenario(s) for your own job"),
])
def test_bad_chaos_jobs_usage_is_one_line(args: list[str], expected: str, tmp_path: Path) -> None:
    done = _chaos(*args, "--out", str(tmp_path / "out"))
    assert done.returncode == 2
    assert expected in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_chaos_judges_every_job_of_a_jobs_file(tmp_path: Path) -> None:
    """examples/chaos-my-job/jobs.toml: every 0.5 s, every second, cron */2 and an overlap-allow job whose every
    third run takes 1.5 s; a graceful and a crash handover, each job judged on its own."""
    out = tmp_path / "out"
    done = _chaos("--jobs", "jobs.toml", "--fast", "--replicas", "2", "--members", "1",
                  "--scenarios", "sigterm-leader,sigkill-leader", "--out", str(out), timeout=150)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "running the 4 jobs of" in done.stdout and "history ring 1200 runs a job" in done.stdout
    for scenario in ("sigterm-leader", "sigkill-leader"):
        assert f"{scenario} (round 1): held" in done.stdout
    lines = [line.strip() for line in done.stdout.splitlines() if line.strip().startswith("job ")]
    assert len(lines) == 8 and all(": held;" in line for line in lines), lines
    slow = [line for line in lines if line.startswith("job sometimes-slow (every 1 s, overlap allow 2)")]
    assert len(slow) == 2
    assert any("(at most 2 at once)" in line for line in slow)  # the allowed overlap did happen
    report = (out / "report.md").read_text()
    assert "no handover to judge" not in report  # every job ran before each fault: each handover was judged
    assert "## By job" in report and "| sigterm-leader | cron-two | cron '*/2 * * * * *' (UTC) | skip |" in report
