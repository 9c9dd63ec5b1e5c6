"""`singleton chaos --sharded`: the harness's faults against sharded replicas (chaos/shardreplica.py), each leading
some of N groups (one job per group, every second) on one member lease.

Each replica reaches etcd through its own cuttable proxies, as in the plain harness; a watch of the groups' keys
gives etcd's account of who leads each group. A fault hits the replica that leads the most groups at that moment;
every group it led is an orphan that the verdict (chaos/shardverdict.py) follows on its own.
"""
from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from singleton.chaos.harness import PREFIX, FaultEvent, Harness, ReplicaOptions, ScenarioRun
from singleton.chaos.shardreplica import JobTick, LedgerTail, group_name
from singleton.chaos.shardverdict import KeyEvent, ShardEvidence, judge_sharded
from singleton.chaos.verdict import Verdict
from singleton.core.config import Config
from singleton.core.errors import BackendError
from singleton.core.records import decode_leader
from singleton.dev.ledger import Tick
from singleton.dev.replicas import ReplicaSet
from singleton.testing.proxy import CuttableProxy

DEFAULT_GROUPS = 12


class ShardReplicaSet(ReplicaSet):
    """Sharded replica processes writing one ledger; `ticks()` reads it as it grows."""

    def __init__(self, workdir: Path, name: str, groups: int, timing_args: list[str], hold_s: float) -> None:
        super().__init__(workdir, "", name, hold_s=hold_s)
        self.groups, self.timing_args = groups, timing_args
        self._tail = LedgerTail(self.ledger)
        self._lock = threading.Lock()

    def start_sharded(self, replica: str, endpoints: str) -> None:
        cmd = [sys.executable, "-m", "singleton.chaos.shardreplica", "--endpoints", endpoints, "--name", self.name,
               "--id", replica, "--prefix", PREFIX, "--groups", str(self.groups), "--ledger", str(self.ledger),
               "--hold", f"{self.hold_s:g}", *self.timing_args]
        with open(self.workdir / f"{replica}.log", "ab") as log:
            self.procs[replica] = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def ticks(self) -> list[Tick]:
        with self._lock:
            return list(self._tail.read())


class ShardHarness(Harness):
    def __init__(self, out_dir: Path, *, groups: int = DEFAULT_GROUPS, **kwargs: object) -> None:
        super().__init__(out_dir, **kwargs)  # type: ignore[arg-type]
        self.groups = groups
        self.shard_run: ScenarioRun | None = None
        self.key_events: list[KeyEvent] = []
        self.leaders_now: dict[str, str] = {}  # group -> replica, as etcd's watch says
        self.orphans: list[list[str]] = []  # per fault event: the groups its target led
        self._keys_lock = threading.Lock()

    @property
    def campaign_delay_s(self) -> float:
        return 0.5  # Config's default: the replicas run with it

    def begin(self, scenario: str, options: ReplicaOptions | None = None) -> ScenarioRun:
        self._runs += 1
        namespace = f"{self.run_id}-{self._runs}-{scenario}"
        workdir = self.out_dir / "runs" / namespace
        workdir.mkdir(parents=True, exist_ok=True)
        t = self.timings
        args = ["--lease-ttl", f"{t.lease_ttl_s:g}", "--keepalive-interval", f"{t.keepalive_interval_s:g}",
                "--min-remaining-ttl", f"{t.min_remaining_ttl_s:g}", "--campaign-delay", f"{self.campaign_delay_s:g}"]
        self.replicas = ShardReplicaSet(workdir, namespace, self.groups, args, self.hold_s)
        self.run = ScenarioRun(scenario, workdir, namespace, time.monotonic(), fast_failover=False,
                               sharded_groups=self.groups)
        self.key_events, self.leaders_now, self.orphans = [], {}, []
        self._watch_stop = threading.Event()
        self._watcher = threading.Thread(target=self._watch_groups, args=(namespace, self._watch_stop), daemon=True,
                                         name="chaos-groups-watch")
        self._watcher.start()
        return self.run

    def _watch_groups(self, namespace: str, stop: threading.Event) -> None:
        """etcd's own account of every group's terms: each put and delete of a group's leader key, on our clock."""
        prefix = Config(endpoints=tuple(self.endpoints), name=namespace, prefix=PREFIX).groups_prefix
        backend = self.backend()
        try:
            _, revision = backend.read_prefix(prefix, 10.0)
            for ev in backend.watch(prefix, revision + 1, stop, prefix=True):
                group, _, leaf = ev.kv.key[len(prefix):].rpartition("/")
                if leaf != "leader":
                    continue
                record = None if ev.deleted else decode_leader(ev.kv.value)
                replica = record.replica_id if record is not None else ""
                with self._keys_lock:
                    self.key_events.append(KeyEvent(time.monotonic(), group, ev.deleted, ev.kv.create_revision,
                                                    replica))
                    if ev.deleted:
                        self.leaders_now.pop(group, None)
                    else:
                        self.leaders_now[group] = replica
        except BackendError:
            pass
        finally:
            backend.close()

    def start_replica(self, *, in_place_of: str | None = None, **_: object) -> str:
        assert isinstance(self.replicas, ShardReplicaSet)
        replica = f"r{self._next_id}"
        ordered = self._ordered_endpoints(self._next_id)
        self._next_id += 1
        proxies = [CuttableProxy(e.host, e.port) for e in ordered]
        self.proxies[replica] = proxies
        self.replicas.start_sharded(replica, ",".join(f"http://127.0.0.1:{p.port}" for p in proxies))
        return replica

    def leaders(self) -> dict[str, str]:
        with self._keys_lock:
            return dict(self.leaders_now)

    def busiest(self) -> tuple[str, list[str]]:
        """The live replica that leads the most groups now, and those groups."""
        alive = set(self.alive())
        led = self.leaders()
        counts = Counter(r for r in led.values() if r in alive)
        replica = counts.most_common(1)[0][0] if counts else sorted(alive)[0]
        return replica, sorted(g for g, r in led.items() if r == replica)

    def wait_settled(self, timeout_s: float) -> bool:
        """Until every group is led and has ticked in the last 1.5 s, and no replica leads more than its even share
        plus one (the rebalance hands one group a second): bounded."""
        deadline = time.monotonic() + timeout_s
        share = -(-self.groups // max(1, self.replica_count)) + 1
        while time.monotonic() < deadline:
            led = self.leaders()
            recent = {t.job for t in self.ticks() if isinstance(t, JobTick) and
                      t.start_mono > time.monotonic() - 1.5}
            if len(led) == self.groups and len(recent) == self.groups and \
                    max(Counter(led.values()).values()) <= share:
                return True
            time.sleep(0.2)
        return False

    def wait_orphans_ticked(self, after: float, old: str, groups: list[str], timeout_s: float) -> None:
        """Until each orphaned group has ticked on another replica after `after` (bounded)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            done = {t.job for t in self.ticks() if isinstance(t, JobTick) and t.start_mono > after and
                    t.replica != old}
            if set(groups) <= done:
                return
            time.sleep(0.1)

    def fault(self, event: FaultEvent, groups: list[str]) -> FaultEvent:
        self.orphans.append(groups)
        return self.record(event)

    def end(self) -> ScenarioRun:
        assert self.replicas is not None and self.run is not None
        run = self.run
        run.stopping_mono = time.monotonic()
        self.replicas.stop_all()
        for proxies in self.proxies.values():
            for proxy in proxies:
                proxy.close()
        self.proxies.clear()
        run.ticks = self.replicas.ticks()
        self._watch_stop.set()
        self._watcher.join(5)
        deadline = time.monotonic() + self.timings.lease_ttl_s + 3
        while True:
            leaked = [f"{lease} {keys}" for lease, keys in self.lease_keys().items()
                      if self.cluster is not None or any(k.startswith(f"{PREFIX}/{run.namespace}/") for k in keys)]
            if not leaked or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        run.leaked_leases = leaked
        with self._keys_lock:
            run.key_events = [(e.at, e.deleted, e.token) for e in self.key_events]
            run.holders = {e.token: e.replica for e in self.key_events if not e.deleted}
        self.replicas = None
        return run

    def evidence(self, run: ScenarioRun) -> ShardEvidence:
        with self._keys_lock:
            keys = list(self.key_events)
        return ShardEvidence([group_name(i) for i in range(self.groups)], [t for t in run.ticks
                                                                            if isinstance(t, JobTick)],
                             list(run.events), list(self.orphans), keys, run.started_mono,
                             run.stopping_mono or time.monotonic(), self.replica_count)


# --- faults: each hits the replica leading the most groups ------------------------------------------------
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

