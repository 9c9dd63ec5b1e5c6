"""`singleton chaos --sharded`'s faults and scenarios: each fault hits the replica leading the most groups at that
moment (chaos/sharded.py's harness), and every group it led is followed on its own by the verdict
(chaos/shardverdict.py)."""
from __future__ import annotations

import signal
import time
from collections.abc import Callable

from singleton.chaos.harness import FaultEvent, ScenarioRun
from singleton.chaos.sharded import ShardHarness
from singleton.chaos.shardverdict import judge_sharded
from singleton.chaos.verdict import Verdict


def partition_busiest(h: ShardHarness) -> FaultEvent:
    """Blackhole every connection of the busiest replica to etcd for longer than its lease, then heal."""
    target, groups = h.busiest()
    event = h.fault(FaultEvent("partition-busiest", "partition", time.monotonic(), target, old_leader=target,
                               detail=f"{len(groups)} groups"), groups)
    for proxy in h.proxies[target]:
        proxy.cut()
    h.wait_orphans_ticked(event.at_mono, target, groups, h.timings.lease_ttl_s + 2)
    time.sleep(max(0.0, event.at_mono + h.timings.lease_ttl_s + 2 - time.monotonic()))
    for proxy in h.proxies[target]:
        proxy.heal()
    event.healed_at_mono = time.monotonic()
    return event


def sigstop_busiest(h: ShardHarness) -> FaultEvent:
    """Freeze the busiest replica for longer than its lease, then thaw it: it must run nothing on its old terms."""
    assert h.replicas is not None
    target, groups = h.busiest()
    event = h.fault(FaultEvent("sigstop-busiest", "pause", time.monotonic(), target, old_leader=target,
                               detail=f"{len(groups)} groups"), groups)
    h.replicas.signal(target, signal.SIGSTOP)
    h.wait_orphans_ticked(event.at_mono, target, groups, h.timings.lease_ttl_s + 2)
    time.sleep(max(0.0, event.at_mono + h.timings.lease_ttl_s + 2 - time.monotonic()))
    h.replicas.signal(target, signal.SIGCONT)
    event.healed_at_mono = time.monotonic()
    return event


def sigkill_busiest(h: ShardHarness) -> FaultEvent:
    """kill -9 the busiest replica, and start a new one in its place once its groups are taken over."""
    assert h.replicas is not None
    target, groups = h.busiest()
    event = h.fault(FaultEvent("sigkill-busiest", "crash", time.monotonic(), target, old_leader=target,
                               detail=f"{len(groups)} groups"), groups)
    h.replicas.signal(target, signal.SIGKILL)
    h.replicas.procs[target].wait(30)
    h.wait_orphans_ticked(event.at_mono, target, groups, h.timings.lease_ttl_s + 5)
    event.healed_at_mono = time.monotonic()
    h.start_replica(in_place_of=target)
    return event


ShardFault = Callable[[ShardHarness], FaultEvent]
SHARD_FAULTS: dict[str, ShardFault] = {"partition": partition_busiest, "sigstop": sigstop_busiest,
                                       "sigkill": sigkill_busiest}
SHARD_SCENARIOS: dict[str, list[str]] = {"partition": ["partition"], "sigstop": ["sigstop"], "sigkill": ["sigkill"],
                                         # one set of replicas for both (CI: one start-up instead of two)
                                         "partition-then-sigstop": ["partition", "sigstop"]}


def select_sharded(spec: str) -> list[str]:
    if spec == "all":
        return ["partition", "sigstop", "sigkill"]
    names = [n.strip() for n in spec.split(",") if n.strip()]
    unknown = [n for n in names if n not in SHARD_SCENARIOS]
    if unknown:
        raise ValueError(f"unknown sharded scenario(s) {', '.join(unknown)}; known: {', '.join(SHARD_SCENARIOS)}")
    return names


def run_sharded_scenario(h: ShardHarness, name: str, settle_s: float = 60.0) -> tuple[Verdict, ScenarioRun]:
    run = h.begin(name)
    error = None
    try:
        for _ in range(h.replica_count):
            h.start_replica()
        if not h.wait_settled(settle_s):
            raise TimeoutError(f"the {h.groups} groups were not all led and ticking, spread over the replicas, "
                               f"within {settle_s:g} s")
        for fault in SHARD_SCENARIOS[name]:
            SHARD_FAULTS[fault](h)
            time.sleep(2)  # a thawed or healed replica gets its chance to misbehave
            h.wait_settled(h.timings.lease_ttl_s + 10)
        time.sleep(1.5)
    except Exception as exc:  # noqa: BLE001 - a harness failure is a failed scenario, not a crash of the run
        error = f"harness: {type(exc).__name__}: {exc}"
    finally:
        run = h.end()
    verdict = judge_sharded(h.evidence(run), h.timings, h.campaign_delay_s)
    if error:
        verdict.violations.append(error)
    return verdict, run


def progress_line(verdict: Verdict, done: int, total: int, took_s: float) -> str:
    took = ", ".join(f"{k} p50 {sorted(v)[len(v) // 2]:.2f} max {max(v):.2f}"
                     for k, v in verdict.takeovers_by_kind.items() if v) or "-"
    return (f"[{done}/{total}] sharded {verdict.scenario}: {'held' if verdict.held else 'FAILED'} in {took_s:.0f} s; "
            f"{len(verdict.jobs)} groups, takeovers of orphaned groups (s): {took}; overlaps {verdict.overlaps}, "
            f"duplicate slots {verdict.duplicate_slots}, missed slots {verdict.missed_seconds}"
            + "".join(f"\n    {n}" for n in verdict.notes if not n.startswith("group "))
            + ("" if verdict.held else f"\n    {'; '.join(verdict.violations[:8])}"))


def run_all_sharded(h: ShardHarness, names: list[str], rounds: int,
                    progress: Callable[[str], None]) -> list[tuple[Verdict, ScenarioRun]]:
    results = []
    for _ in range(rounds):
        for name in names:
            started = time.monotonic()
            verdict, run = run_sharded_scenario(h, name)
            results.append((verdict, run))
            progress(progress_line(verdict, len(results), len(names) * rounds, time.monotonic() - started))
    return results

