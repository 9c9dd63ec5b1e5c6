"""Scenarios (lists of named faults), run one after another on fresh replicas, with a progress line each."""
from __future__ import annotations

import time
from collections.abc import Callable

from singleton.chaos.compound import COMPOUND_FAULTS, JOB_CANCEL_GRACE_S, JOB_TIMEOUT_S
from singleton.chaos.faults import FAULTS
from singleton.chaos.harness import Harness, ReplicaOptions
from singleton.chaos.slowcallbacks import ON_ELECTED_ENV, ON_STEPPED_DOWN_ENV
from singleton.chaos.verdict import Verdict, judge

ALL_FAULTS = {**FAULTS, **COMPOUND_FAULTS}
# Each fault is a scenario of its own, so that every verdict speaks of one kind of trouble.
SCENARIOS: dict[str, list[str]] = {name: [name] for name in FAULTS}
SCENARIOS["rolling-restart"] = ["sigterm-leader", "sigterm-leader", "sigterm-leader"]
SCENARIOS["handover-clock-ahead"] = ["sigterm-leader-clock-ahead-30s", "sigterm-leader-clock-ahead-1h"]
SCENARIOS["hung-job"] = ["hang-leader-job"]
# Then a graceful stop: before callbacks ran off the safety path, a 5 s on_stepped_down held the handover 5 s.
SCENARIOS["slow-callback-partition"] = ["partition-leader", "sigterm-leader"]
# Hosts whose clocks disagree (-3 s, 0, +3 s): rolling restarts and crashes of the leader, every handover
# between two different clocks; slots must neither repeat nor stall, and each successor must log the skew.
SCENARIOS["skewed-clocks"] = ["sigterm-leader", "sigkill-leader", "sigterm-leader", "sigterm-leader",
                              "sigkill-leader"]

# Scenarios whose replicas differ from plain `singleton run` (the rest get ReplicaOptions()).
OPTIONS: dict[str, ReplicaOptions] = {
    "hung-job": ReplicaOptions(args=("--job-timeout", f"{JOB_TIMEOUT_S:g}", "--job-cancel-grace",
                                     f"{JOB_CANCEL_GRACE_S:g}"), http=True),
    # The numbers: 3 s on_elected at TTL 3 made leadership flap with no tick at all.
    "slow-callback-partition": ReplicaOptions(module="singleton.chaos.slowcallbacks",
                                              env=((ON_ELECTED_ENV, "3"), (ON_STEPPED_DOWN_ENV, "5"))),
    "skewed-clocks": ReplicaOptions(clock_offsets_s=(-3.0, 0.0, 3.0)),
}


# With the user's own job (`--job`): the scenarios that do not shape the job (slow, raising, hanging: those use
# the ledger job's switches) nor step or skew a replica's clock (the run record's start times are the replicas'
# wall clocks, read as the harness's time).
USER_JOB_SCENARIOS = ("sigkill-leader", "sigterm-leader", "sigstop-leader", "partition-leader", "kill-leader-member",
                      "kill-raft-leader", "quorum-loss", "cluster-restart", "herd", "rolling-restart")


def select(spec: str, user_job: bool = False) -> list[str]:
    offered = list(USER_JOB_SCENARIOS if user_job else SCENARIOS)
    if spec == "all":
        return offered
    names = [n.strip() for n in spec.split(",") if n.strip()]
    unknown = [n for n in names if n not in offered]
    if unknown:
        what = "scenario(s) for your own job (--job, --jobs)" if user_job and all(n in SCENARIOS for n in unknown) else \
            "scenario(s)"
        raise ValueError(f"unknown {what} {', '.join(unknown)}; known: {', '.join(offered)}")
    return names


def run_scenario(h: Harness, name: str, broken: bool = False, broken_keeps_record: bool = False) -> tuple[Verdict, object]:
    run = h.begin(name, OPTIONS.get(name))
    error = None
    try:
        for _ in range(h.replica_count):
            h.start_replica(broken=broken, broken_keeps_record=broken_keeps_record)
        if h.wait_tick(run.started_mono, 30) is None:
            raise TimeoutError("no replica ticked within 30 s")
        time.sleep(2)
        for fault in SCENARIOS[name]:
            ALL_FAULTS[fault](h)
            time.sleep(2)
        h.wait_tick(time.monotonic(), h.timings.lease_ttl_s + 5)
        time.sleep(1.5)
    except Exception as exc:  # noqa: BLE001 - a harness failure is a failed scenario, not a crash of the run
        error = f"harness: {type(exc).__name__}: {exc}"
    finally:
        run = h.end()
    verdict = judge(run, h.timings)
    if error:
        verdict.violations.append(error)
    return verdict, run


def run_all(h: Harness, names: list[str], rounds: int, progress: Callable[[str], None],
            broken: bool = False) -> list[tuple[Verdict, object]]:
    results = []
    total = len(names) * rounds
    for round_no in range(rounds):
        for name in names:
            started = time.monotonic()
            verdict, run = run_scenario(h, name, broken=broken)
            results.append((verdict, run))
            took = ", ".join(f"{t:.2f}" for t in verdict.takeovers_s) or "-"
            progress(f"[{len(results)}/{total}] {name} (round {round_no + 1}): "
                     f"{'held' if verdict.held else 'FAILED'} in {time.monotonic() - started:.0f} s; "
                     f"takeovers {took} s; overlaps {verdict.overlaps}, duplicate slots {verdict.duplicate_slots}, "
                     f"missed {'instants' if verdict.jobs else 'seconds'} {verdict.missed_seconds}, terms "
                     f"{verdict.terms} (silent {verdict.silent_terms}), history entries {verdict.history_entries}"
                     + "".join(f"\n    job {j.job} ({j.schedule}, overlap {j.policy}): {'held' if j.held else 'FAILED'}; "
                               f"{j.runs} runs, duplicate slots {j.duplicate_slots}, overlaps {j.overlaps} (at most "
                               f"{j.most_at_once} at once), missed instants {j.missed_instants}" for j in verdict.jobs)
                     + ("" if verdict.held else f"; {'; '.join(verdict.violations)}"))
    return results
