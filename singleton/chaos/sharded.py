"""`singleton chaos --sharded`'s harness: sharded replicas (chaos/shardreplica.py), each leading some of N groups
(one job per group, every second) on one member lease; the faults and scenarios are in chaos/shardfaults.py.

Each replica reaches etcd through its own cuttable proxies, as in the plain harness; a watch of the groups' keys
gives etcd's account of who leads each group. A fault hits the replica that leads the most groups at that moment;
every group it led is an orphan that the verdict (chaos/shardverdict.py) follows on its own.
"""
from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

from singleton.chaos.harness import PREFIX, FaultEvent, Harness, ReplicaOptions, ScenarioRun
from singleton.chaos.shardreplica import JobTick, LedgerTail, group_name
from singleton.chaos.shardverdict import KeyEvent, ShardEvidence
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
        run.leaked_leases = self.leaked_leases(run.namespace)
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
