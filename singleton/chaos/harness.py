"""The cluster under test: etcd (embedded, or the user's endpoints), N replica processes each behind its own
cuttable TCP proxies, a tick ledger, and the record of every fault injected."""
from __future__ import annotations

import base64
import json
import math
import os
import socket
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from singleton.core.config import Config, Endpoint
from singleton.core.jobspec import JobSpec
from singleton.core.schedule import Interval, Schedule, next_instants
from singleton.core.security import Credentials
from singleton.core.timings import DEFAULT, Timings
from singleton.dev.embedded import EtcdCluster, EtcdMember, etcd_binary
from singleton.core.errors import BackendError
from singleton.backends.etcd import EtcdBackend
from singleton.core.records import decode_leader
from singleton.dev.ledger import FAIL_EVERY_ENV, HANG_FILE_ENV, HOLD_ENV, Tick
from singleton.testing.proxy import CuttableProxy
from singleton.dev.replicas import LEDGER_JOB, ReplicaSet
from singleton.chaos.broken import KEEP_RECORD_ENV
from singleton.chaos.clockstep import CLOCK_FILE_ENV
from singleton.chaos.recordticks import RecordReplicaSet
from singleton.ops.history import read_runs
from singleton.v1.run_pb2 import RunEntry, RunRecord

PREFIX = "/singleton-chaos"
# The history ring of the chaos replicas: large enough that every run of a scenario stays in it, so the verdict
# can match each ledger tick with its entry (a scenario claims well under one slot a second of its length).
HISTORY_SIZE = 1000
# With a jobs file, each job's ring must hold every run of a scenario too: no scenario offered for the user's jobs
# lasts longer than this (rolling restarts and etcd outages at the default timings included), and the ring is
# sized for the file's fastest job over it, twice over.
SCENARIO_BOUND_S = 300.0


def shortest_gap_s(schedule: Schedule) -> float:
    """The shortest time between two instants of the schedule (a cron's, over its next 120 instants)."""
    if isinstance(schedule, Interval):
        return schedule.period_s
    slots = next_instants(schedule, time.time(), 120)
    return min((schedule.instant(b) - schedule.instant(a) for a, b in zip(slots, slots[1:])), default=1.0)


def history_size_for(specs: list[JobSpec]) -> int:
    """`--history-size` for replicas running these jobs: every run of a scenario stays in each job's ring."""
    if not specs:
        return HISTORY_SIZE
    fastest = min(shortest_gap_s(spec.schedule) for spec in specs)
    return max(HISTORY_SIZE, math.ceil(SCENARIO_BOUND_S / fastest * 2))


@dataclass(frozen=True)
class ReplicaOptions:
    """How a scenario's replicas are started: a wrapper module of the CLI, extra env and flags, and
    whether each serves /healthz on a port of its own (for a liveness prober)."""

    module: str = "singleton.chaos.clockstep"
    env: tuple[tuple[str, str], ...] = ()
    args: tuple[str, ...] = ()
    http: bool = False
    # Wall-clock offsets of the first replicas, in order of start (missing: 0); a replica started in place of
    # another (after a kill or a stop) keeps its offset: it runs on the same host.
    clock_offsets_s: tuple[float, ...] = ()


@dataclass
class FaultEvent:
    name: str
    kind: str  # graceful, crash, pause, partition, etcd, job, clock, herd, hung
    at_mono: float
    target: str
    healed_at_mono: float | None = None
    old_leader: str | None = None
    detail: str = ""


@dataclass
class ScenarioRun:
    """One scenario's evidence: the ledger, the faults, and what etcd said."""

    name: str
    workdir: Path
    namespace: str
    started_mono: float
    events: list[FaultEvent] = field(default_factory=list)
    leaked_leases: list[str] = field(default_factory=list)
    key_events: list[tuple[float, bool, int]] = field(default_factory=list)  # (monotonic, deleted, token) from etcd
    stale_write_refused: bool | None = None
    ticks: list[Tick] = field(default_factory=list)
    holders: dict[int, str] = field(default_factory=dict)  # token -> replica id, from the leader key's value
    probes: list[tuple[float, str, int]] = field(default_factory=list)  # (monotonic, replica, HTTP status)
    kills: dict[str, float] = field(default_factory=dict)  # replica -> when the liveness prober killed it
    stopping_mono: float | None = None
    clock_offsets_s: dict[str, float] = field(default_factory=dict)  # replica -> its wall clock's offset at start
    # The run record as etcd holds it at the end (None: not read; see history_error).
    run_record: RunRecord | None = None
    history: list[RunEntry] | None = None
    history_error: str | None = None
    user_job: str | None = None  # the user's job (`module:callable`): ticks come from the run record, not a ledger
    fast_failover: bool = True  # the replicas sense a dead leader (a crash then takes ~1 s, not the lease)
    # `--jobs FILE`: every job of the file, judged on its own from its record (job name -> record, history).
    jobs_file: str | None = None
    jobs: list[JobSpec] = field(default_factory=list)
    job_records: dict[str, tuple[RunRecord | None, list[RunEntry]]] = field(default_factory=dict)
    history_size: int = HISTORY_SIZE
    wall_minus_mono: float = 0.0  # the replicas' wall clock minus the harness's monotonic one (one host)
    sharded_groups: int = 0  # `--sharded`: sharded replicas leading this many groups, each judged on its own


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class EtcdAccess:
    """TLS and auth for the user's etcd: the files as `singleton run` takes them, and what they hold."""

    credentials: Credentials | None = None
    cacert: str = ""
    cert: str = ""
    key: str = ""
    user: str = ""
    password_file: str = ""

    def run_args(self) -> list[str]:
        """The replicas' flags (the password goes by file, or by SINGLETON_PASSWORD, which they inherit)."""
        pairs = (("--cacert", self.cacert), ("--cert", self.cert), ("--key", self.key), ("--user", self.user),
                 ("--password-file", self.password_file))
        return [arg for flag, value in pairs if value for arg in (flag, value)]

    def etcdctl_env(self) -> dict[str, str]:
        env = {"ETCDCTL_CACERT": self.cacert, "ETCDCTL_CERT": self.cert, "ETCDCTL_KEY": self.key}
        if self.credentials is not None and self.credentials.user:
            env["ETCDCTL_USER"] = f"{self.credentials.user}:{self.credentials.password}"  # env: not in `ps`
        return {k: v for k, v in env.items() if v}


class Harness:
    def __init__(self, out_dir: Path, *, endpoints: list[Endpoint] | None = None, members: int = 1,
                 replicas: int = 3, timings: Timings = DEFAULT, hold_s: float = 0.05, job: str | None = None,
                 access: EtcdAccess | None = None, jobs_file: str | None = None,
                 jobs: list[JobSpec] | None = None) -> None:
        self.out_dir, self.replica_count, self.timings, self.hold_s = out_dir, replicas, timings, hold_s
        # The user's job (`module:callable`): judged from etcd's run record alone, as it writes no ledger.
        self.job = job
        # Or every job of the user's jobs file (`--jobs`, validated by the caller), each from its own record.
        self.jobs_file, self.jobs = jobs_file, list(jobs or [])
        self.history_size = history_size_for(self.jobs)
        self.access = access or EtcdAccess()
        self.run_id = uuid.uuid4().hex[:6]
        self.cluster = None if endpoints else EtcdCluster(members, out_dir / "etcd")
        self._endpoints = endpoints
        self.replicas: ReplicaSet | None = None
        self.proxies: dict[str, list[CuttableProxy]] = {}
        self.clock_files: dict[str, Path] = {}
        self.http_ports: dict[str, int] = {}
        self.options = ReplicaOptions()
        self.run: ScenarioRun | None = None
        self._next_id = 0
        self._runs = 0

    # --- etcd ----------------------------------------------------------------------------------------
    def start(self) -> Harness:
        if self.cluster is not None:
            self.cluster.start()
        return self

    @property
    def endpoints(self) -> list[Endpoint]:
        return self._endpoints or (self.cluster.endpoints if self.cluster else [])

    def backend(self) -> EtcdBackend:
        return EtcdBackend(self.endpoints, credentials=self.access.credentials)

    def _etcdctl(self, *args: str) -> str:
        env = {**os.environ, **self.access.etcdctl_env()}
        return subprocess.run([etcd_binary("etcdctl"), "--endpoints=" + ",".join(str(e) for e in self.endpoints),
                               *args], capture_output=True, text=True, timeout=10, env=env).stdout

    def _ordered_endpoints(self, replica_no: int) -> list[Endpoint]:
        """Each replica lists the members in a different order, so the replicas spread over them."""
        shift = replica_no % len(self.endpoints)
        return self.endpoints[shift:] + self.endpoints[:shift]

    def member_behind(self, replica: str) -> EtcdMember | None:
        """The member first in the replica's endpoint list: the one its client talks to unless that fails."""
        if self.cluster is None:
            return None
        return self.cluster.members[int(replica.lstrip("r")) % len(self.cluster.members)]

    def raft_leader(self) -> EtcdMember | None:
        if self.cluster is None:
            return None
        out = self._etcdctl("endpoint", "status", "-w", "json")
        for status, member in zip(json.loads(out or "[]"), self.cluster.members):
            if status["Status"]["leader"] == status["Status"]["header"]["member_id"]:
                return member
        return None

    def leaked_leases(self, namespace: str) -> list[str]:
        """Leases still holding keys of this scenario once its replicas stopped. Killed replicas' leases lapse by
        themselves: wait out one TTL before calling what is left a leak."""
        deadline = time.monotonic() + self.timings.lease_ttl_s + 3
        while True:
            leaked = [f"{lease} {keys}" for lease, keys in self.lease_keys().items()
                      if self.cluster is not None or any(k.startswith(f"{PREFIX}/{namespace}/") for k in keys)]
            if not leaked or time.monotonic() > deadline:
                return leaked
            time.sleep(0.5)

    def lease_keys(self) -> dict[str, list[str]]:
        """Live leases and the keys attached, as etcd itself (etcdctl) reports them."""
        leases = {}
        listing = self._etcdctl("lease", "list")
        for lease in [line.strip() for line in listing.splitlines()[1:] if line.strip()]:
            ttl = self._etcdctl("lease", "timetolive", lease, "--keys", "-w", "json")
            keys = json.loads(ttl).get("keys") or [] if ttl.strip() else []
            leases[lease] = [base64.b64decode(k).decode(errors="replace") for k in keys]
        return leases

    # --- replicas --------------------------------------------------------------------------------------
    def begin(self, scenario: str, options: ReplicaOptions | None = None) -> ScenarioRun:
        self._runs += 1
        self.options = options or ReplicaOptions()
        self.http_ports = {}
        namespace = f"{self.run_id}-{self._runs}-{scenario}"  # every run its own keys and ledger
        workdir = self.out_dir / "runs" / namespace
        workdir.mkdir(parents=True, exist_ok=True)
        args = [*self.timings.cli_args(), "--prefix", PREFIX, "--history-size", str(self.history_size),
                *self.access.run_args()]
        if self.job or self.jobs_file:
            config = Config(endpoints=tuple(self.endpoints), name=namespace, prefix=PREFIX)
            schedules: dict[str | None, Schedule] | None = \
                {spec.name: spec.schedule for spec in self.jobs} if self.jobs_file else None
            self.replicas = RecordReplicaSet(workdir, config, self.access.credentials, args, self.history_size,
                                             schedules)
        else:
            self.replicas = ReplicaSet(workdir, "", namespace, args, hold_s=self.hold_s)
        self.run = ScenarioRun(scenario, workdir, namespace, time.monotonic(), user_job=self.job,
                               fast_failover="--no-fast-failover" not in self.options.args,
                               jobs_file=self.jobs_file, jobs=list(self.jobs), history_size=self.history_size,
                               wall_minus_mono=getattr(self.replicas, "wall_minus_mono", 0.0))
        self._watch_stop = threading.Event()
        self._watcher = threading.Thread(target=self._watch_leader_key, args=(self.run, self._watch_stop),
                                         daemon=True, name="chaos-key-watch")
        self._watcher.start()
        return self.run

    def _watch_leader_key(self, run: ScenarioRun, stop: threading.Event) -> None:
        """etcd's own account of the terms: every put and delete of the leader key, on our clock."""
        key = Config(endpoints=tuple(self.endpoints), name=run.namespace, prefix=PREFIX).leader_key
        backend = self.backend()
        try:
            _, revision = backend.get(key, 10.0)
            for ev in backend.watch(key, revision + 1, stop):
                run.key_events.append((time.monotonic(), ev.deleted, ev.kv.create_revision))
                record = None if ev.deleted else decode_leader(ev.kv.value)
                if record is not None:
                    run.holders[ev.kv.create_revision] = record.replica_id
        except BackendError:
            pass
        finally:
            backend.close()

    def start_replica(self, *, hold_s: float | None = None, fail_every: int = 0, broken: bool = False,
                      broken_keeps_record: bool = False, in_place_of: str | None = None) -> str:
        assert self.replicas is not None and self.run is not None
        replica = f"r{self._next_id}"
        offsets = self.options.clock_offsets_s
        started = len(self.run.clock_offsets_s)
        offset = (self.run.clock_offsets_s.get(in_place_of, 0.0) if in_place_of is not None
                  else offsets[started] if started < len(offsets) else 0.0)
        self.run.clock_offsets_s[replica] = offset
        ordered = self._ordered_endpoints(self._next_id)
        self._next_id += 1
        proxies = [CuttableProxy(e.host, e.port) for e in ordered]
        self.proxies[replica] = proxies
        clock_file = self.replicas.workdir / f"{replica}.clock"
        clock_file.write_text(f"{offset:g}")
        self.clock_files[replica] = clock_file
        env = {CLOCK_FILE_ENV: str(clock_file), FAIL_EVERY_ENV: str(fail_every), HANG_FILE_ENV: str(self.hang_file),
               **dict(self.options.env)}
        if hold_s is not None:
            env[HOLD_ENV] = str(hold_s)
        if broken_keeps_record:
            env[KEEP_RECORD_ENV] = "1"
        args = list(self.options.args)
        if self.options.http:
            self.http_ports[replica] = free_port()
            args += ["--http-host", "127.0.0.1", "--http-port", str(self.http_ports[replica])]  # the last flag wins
        scheme = "https" if ordered[0].secure else "http"
        self.replicas.start(replica, endpoints=",".join(f"{scheme}://127.0.0.1:{p.port}" for p in proxies),
                            module="singleton.chaos.broken" if broken else self.options.module, env=env,
                            extra_args=args, job=self.job or LEDGER_JOB, jobs_file=self.jobs_file or "")
        return replica

    @property
    def hang_file(self) -> Path:
        """Creating this file makes the next tick of this run hang for good (see dev/ledger.py)."""
        assert self.replicas is not None
        return self.replicas.workdir / "hang"

    def alive(self) -> list[str]:
        assert self.replicas is not None
        return [r for r, p in self.replicas.procs.items() if p.poll() is None]

    def ticks(self) -> list[Tick]:
        assert self.replicas is not None
        return self.replicas.ticks()

    def leader(self, timeout_s: float = 30.0) -> str:
        """The replica that ticked last, once its tick has ended (so a fault lands between ticks)."""
        assert self.replicas is not None
        return self.replicas.quiet_moment(timeout_s, window=(0.3, 0.7), recent_s=1.5).replica

    def wait_tick(self, after_mono: float, timeout_s: float, exclude: str | None = None) -> Tick | None:
        assert self.replicas is not None
        return self.replicas.first_tick_after(after_mono, timeout_s, exclude)

    def record(self, event: FaultEvent) -> FaultEvent:
        assert self.run is not None
        self.run.events.append(event)
        return event

    # --- ending a scenario -----------------------------------------------------------------------------
    def end(self) -> ScenarioRun:
        assert self.replicas is not None and self.run is not None
        run = self.run
        run.stopping_mono = time.monotonic()  # terms won from here on are the shutdown's, not the scenario's
        run.stale_write_refused = self._stale_write_refused(run)  # while a leader still stands
        self.replicas.stop_all()
        for proxies in self.proxies.values():
            for proxy in proxies:
                proxy.close()
        self.proxies.clear()
        try:
            run.ticks = self.replicas.final_ticks() if isinstance(self.replicas, RecordReplicaSet) else self.ticks()
        except BackendError as err:
            run.ticks, run.history_error = self.ticks(), f"{type(err).__name__}: {err}"
        self._watch_stop.set()
        self._watcher.join(5)
        run.leaked_leases = self.leaked_leases(run.namespace)
        if self.jobs_file and isinstance(self.replicas, RecordReplicaSet):
            # The records as final_ticks() read them, once every replica had stopped (None: that read failed).
            if run.history_error is None:
                run.job_records = {str(job): found for job, found in self.replicas.per_job.items()}
                run.history = [e for _, entries in run.job_records.values() for e in entries]
        else:
            self._read_record(run)
        self.replicas = None
        return run

    def _read_record(self, run: ScenarioRun) -> None:
        """The run record and the whole history ring, for the verdict to match against the ledger."""
        backend = self.backend()
        try:
            cfg = Config(endpoints=tuple(self.endpoints), name=run.namespace, prefix=PREFIX)
            run.run_record, run.history = read_runs(backend, cfg, HISTORY_SIZE, timeout_s=10.0)
        except BackendError as err:
            run.history_error = f"{type(err).__name__}: {err}"
        finally:
            backend.close()

    def _stale_write_refused(self, run: ScenarioRun) -> bool | None:
        """An independent client writes with the oldest token in the ledger while a newer term stands:
        etcd must refuse it, and accept the same write with the current token (so the check can pass).
        None when the run had only one term."""
        tokens = sorted({t.token for t in self.ticks()})
        cfg = Config(endpoints=tuple(self.endpoints), name=run.namespace, prefix=PREFIX)
        backend = self.backend()
        key = f"{PREFIX}/{run.namespace}/guarded-write"
        try:
            kv, _ = backend.get(cfg.leader_key, 5.0)
            if not tokens or kv is None or kv.create_revision == tokens[0]:
                return None
            stale_refused = not backend.guarded_put(cfg.leader_key, tokens[0], key, b"stale", 5.0)
            fresh_taken = backend.guarded_put(cfg.leader_key, kv.create_revision, key, b"fresh", 5.0)
            return stale_refused and fresh_taken
        except BackendError:
            return None
        finally:
            backend.close()

    def close(self) -> None:
        watch_stop = getattr(self, "_watch_stop", None)  # a run never ended: stop its key watch too
        if watch_stop is not None:
            watch_stop.set()
        if self.replicas is not None:
            self.replicas.stop_all()
        for proxies in self.proxies.values():
            for proxy in proxies:
                proxy.close()
        if self.cluster is not None:
            for member in self.cluster.members:
                member.kill()
