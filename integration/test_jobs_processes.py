"""20 jobs (intervals of 0.25 to 7 s, cron with seconds in three zones, a slow one, one that overlaps by policy, one
that raises, one that only its timeout ends) on three real replicas of one name against a real etcd; the leader gets
SIGTERM, its successor SIGKILL. Judged per job from each job's own ledger (written by the jobs) and its run record and
history in etcd: no slot twice, no overlap beyond the job's policy, every ledger run in the history, and the graceful
handover missed no instant of any job."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from singleton.backends.etcd import EtcdBackend
from singleton.chaos.recordcheck import record_violations
from singleton.core.config import Config
from singleton.core.jobspec import build_job_spec
from singleton.core.timings import FAST
from singleton.dev.embedded import EtcdCluster
from singleton.dev.ledger import Tick
from singleton.ops.history import read_runs
from singleton.testing.recorder import wait_for

sys.path.insert(0, str(Path(__file__).parent))
from jobs_replica import JOBS  # noqa: E402

REPLICA = Path(__file__).parent / "jobs_replica.py"
CRASH_BOUND_S = FAST.lease_ttl_s + 1 + 0.5 + 1.0  # lease, a second, etcd's expiry check, a busy machine
POLICY_LIMIT = {"allow": 2}  # runs of one job at once; 1 for every other job
# A slow or overlapping job's slots may be skipped at a handover for good reason (its run still went on).
NOT_EVERY_INSTANT = {"slow", "allow"}


def ledger(directory: Path, job: str) -> list[dict[str, float]]:
    path = directory / f"{job}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def runs_by(directory: Path, job: str, replica: str) -> list[int]:
    return sorted(int(r["slot"]) for r in ledger(directory, job) if r["replica"] == replica)


def overlap_beyond(runs: list[dict[str, float]], limit: int) -> int:
    """The most runs of one job going at once, when more than `limit`; 0 otherwise."""
    worst = max((sum(1 for o in runs if o["start_mono"] <= r["start_mono"] < o["end_mono"]) for r in runs), default=0)
    return worst if worst > limit else 0


def test_twenty_jobs_on_three_replicas_through_a_sigterm_and_a_sigkill(etcd: EtcdCluster, name: str,
                                                                         tmp_path: Path) -> None:
    procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(replica: str) -> None:
        with open(tmp_path / f"{replica}.log", "ab") as log:
            procs[replica] = subprocess.Popen([sys.executable, str(REPLICA), etcd.endpoints_arg, name, replica,
                                               str(tmp_path)], stdout=log, stderr=subprocess.STDOUT,
                                              stdin=subprocess.DEVNULL, env={**os.environ})

    def log_of(replica: str) -> str:
        return (tmp_path / f"{replica}.log").read_text(errors="replace")

    try:
        start("a")
        wait_for(lambda: len(runs_by(tmp_path, "s1", "a")) >= 1, 30, f"a to lead ({tmp_path})")
        start("b")
        start("c")
        wait_for(lambda: all("standing by" in log_of(r) for r in ("b", "c")), 30, "two standbys")
        wait_for(lambda: len(runs_by(tmp_path, "s1", "a")) >= 4, 20, "a few seconds of a")
        procs["a"].send_signal(signal.SIGTERM)  # graceful: it drains, hands over, and exits
        assert procs["a"].wait(15) == 0, log_of("a")
        wait_for(lambda: any(runs_by(tmp_path, "s1", r) for r in ("b", "c")), 20, "a successor")
        successor = "b" if runs_by(tmp_path, "s1", "b") else "c"
        third = "c" if successor == "b" else "b"
        wait_for(lambda: len(runs_by(tmp_path, "s1", successor)) >= 4, 20, "a few seconds of the successor")
        killed_at = time.monotonic()
        procs[successor].send_signal(signal.SIGKILL)
        procs[successor].wait(10)
        wait_for(lambda: len(runs_by(tmp_path, "s1", third)) >= 4, CRASH_BOUND_S + 6, "the third to take over")
        procs[third].send_signal(signal.SIGTERM)
        assert procs[third].wait(15) == 0, log_of(third)
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)

    first_of_third = min(r["start_mono"] for r in ledger(tmp_path, "s1") if r["replica"] == third)
    assert first_of_third - killed_at <= CRASH_BOUND_S, "the crash takeover took too long"
    cfg = Config(endpoints=etcd.endpoints_arg, name=name)
    backend = EtcdBackend.from_config(cfg)
    problems: list[str] = []
    compared = 0  # jobs whose handover was judged (both leaders ran them)
    try:
        for job, (options, _) in JOBS.items():
            runs = ledger(tmp_path, job)
            slots = [int(r["slot"]) for r in runs]
            if len(slots) != len(set(slots)):
                problems.append(f"{job}: a slot ran twice")
            if worst := overlap_beyond(runs, POLICY_LIMIT.get(job, 1)):
                problems.append(f"{job}: {worst} runs at once")
            ticks = [Tick(str(r["replica"]), int(r["pid"]), int(r["token"]), int(r["slot"]), r["start_mono"], 0.0,
                          r["end_mono"]) for r in runs]
            record, entries = read_runs(backend, cfg, 1000, job=job)
            problems += [f"{job}: {p}" for p in record_violations(ticks, entries, record, 1000)]
            before, after = runs_by(tmp_path, job, "a"), runs_by(tmp_path, job, successor)
            if job not in NOT_EVERY_INSTANT and before and after:
                schedule = build_job_spec(job, **options).schedule
                compared += 1
                if after[0] != schedule.slot_after(before[-1]):
                    problems.append(f"{job}: the handover went from slot {before[-1]} to {after[0]} "
                                    f"(expected {schedule.slot_after(before[-1])})")
    finally:
        backend.close()
    assert not problems, "; ".join(problems) + f" (logs and ledgers in {tmp_path})"
    assert compared >= 12, f"only {compared} jobs ran on both sides of the handover ({tmp_path})"
    for job in ("s1", "q1", "h1", "raising", "slow", "allow"):  # every leader ran the frequent jobs
        missing = [r for r in ("a", successor, third) if not runs_by(tmp_path, job, r)]
        assert not missing, f"{job} never ran on {missing} ({tmp_path})"
    took = [r["end_mono"] - r["start_mono"] for r in ledger(tmp_path, "hung")]
    # Its timeout (or a stop's cancel, earlier) ended every run; none ran on to its 30 s.
    assert took and all(t < 1.5 for t in took) and sum(t >= 0.45 for t in took) >= 3, took
