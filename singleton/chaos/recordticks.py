"""Ticks as etcd's run record tells them: the evidence when the replicas run the user's own job, which writes no
ledger. Every run is claimed in etcd before it starts, and its outcome (start, duration, ok/failed/...) lands in
the history ring with the next claim; the claim standing now is the run going on.

Start times are the running replica's wall clock; on one host they map onto the machine-wide monotonic clock the
harness records its faults on (so the scenarios that step or skew a replica's clock are not offered here).
"""
from __future__ import annotations

import time
from pathlib import Path

from singleton.backends.etcd import EtcdBackend
from singleton.core.config import Config
from singleton.core.errors import BackendError
from singleton.core.schedule import Interval, Schedule
from singleton.core.security import Credentials
from singleton.dev.ledger import Tick
from singleton.dev.replicas import ReplicaSet
from singleton.ops.history import read_runs
from singleton.v1.run_pb2 import RunEntry, RunRecord

RAN = ("ok", "failed", "cancelled")  # outcomes of runs that ended (skipped and late ones never started)
REFRESH_S = 0.1  # the harness polls ticks every 10-50 ms; etcd is read at most this often
EVERY_SECOND = Interval(1000)  # the single `--job`'s schedule: slot k is the Unix second k


def ticks_from_record(record: RunRecord | None, entries: list[RunEntry], wall_minus_mono: float,
                      now_wall: float, guess_running_done: bool = True,
                      schedule: Schedule = EVERY_SECOND) -> list[Tick]:
    """The finished and unknown runs of the history, plus the claimed run that has started, as ticks.
    An `unknown` run (its leader died before reporting it) has no end; nor has the current one, unless
    `guess_running_done` (for timing faults between runs, never for the verdict) and it has run longer than
    the job's recent runs took. `schedule` maps a slot onto its instant (a jobs file's job has its own)."""
    ticks = []
    for e in entries:
        if e.outcome not in (*RAN, "unknown"):
            continue
        start_wall = e.started_at_unix_s or schedule.instant(e.slot)  # an unknown run's start was never reported
        start = start_wall - wall_minus_mono
        end = start + e.duration_s if e.outcome in RAN else None
        ticks.append(Tick(e.replica_id, 0, e.fencing_token, e.slot, start, start_wall, end))
    reported = {e.seq for e in entries}
    claimed_at = schedule.instant(record.slot) if record is not None else 0.0
    if record is not None and record.seq not in reported and now_wall >= claimed_at:
        # The run of the standing claim: started at its slot's instant. Finished, as far as a fault's timing is
        # concerned, once the job's longest recent run time has passed (its end is reported with the next claim).
        durations = [e.duration_s for e in entries[-5:] if e.outcome in RAN]
        start = claimed_at - wall_minus_mono
        done = guess_running_done and durations and now_wall - claimed_at > max(durations) + 0.05
        ticks.append(Tick(record.replica_id, 0, record.fencing_token, record.slot, start, claimed_at,
                          start + max(durations) if done else None))
    return sorted(ticks, key=lambda t: t.start_mono)


class RecordReplicaSet(ReplicaSet):
    """Replica processes running the user's job(s); `ticks()` reads the run records from etcd instead of a ledger.
    `jobs`: each job's name (None: the single `--job`'s legacy record) and schedule; the ticks are every job's
    runs together (for timing the faults), `per_job` keeps them apart (for the verdict)."""

    def __init__(self, workdir: Path, config: Config, credentials: Credentials | None, extra_args: list[str],
                 history_size: int, jobs: dict[str | None, Schedule] | None = None) -> None:
        super().__init__(workdir, "", config.name, extra_args)
        self.config, self.credentials, self.history_size = config, credentials, history_size
        self.jobs: dict[str | None, Schedule] = jobs or {None: EVERY_SECOND}
        self.wall_minus_mono = time.time() - time.monotonic()
        self._cached: tuple[float, list[Tick]] = (float("-inf"), [])
        self.per_job: dict[str | None, tuple[RunRecord | None, list[RunEntry]]] = {}

    @property
    def record(self) -> RunRecord | None:
        return self.per_job.get(next(iter(self.jobs)), (None, []))[0]

    @property
    def history(self) -> list[RunEntry]:
        return self.per_job.get(next(iter(self.jobs)), (None, []))[1]

    def read(self) -> None:
        """Read every job's record and history now (raises BackendError)."""
        backend = EtcdBackend(self.config.endpoints, credentials=self.credentials)
        try:
            for job in self.jobs:
                record, newest_first = read_runs(backend, self.config, self.history_size, timeout_s=5.0, job=job)
                self.per_job[job] = (record, sorted(newest_first, key=lambda e: e.seq))
        finally:
            backend.close()
        self._cached = (time.monotonic(), self._ticks(guess_running_done=True))

    def _ticks(self, guess_running_done: bool) -> list[Tick]:
        now = time.time()
        ticks = [t for job, (record, history) in self.per_job.items()
                 for t in ticks_from_record(record, history, self.wall_minus_mono, now, guess_running_done,
                                            self.jobs[job])]
        return sorted(ticks, key=lambda t: t.start_mono)

    def final_ticks(self) -> list[Tick]:
        """For the verdict, read once more: the run still claimed at the end counts as unfinished."""
        self.read()
        return self._ticks(guess_running_done=False)

    def ticks(self) -> list[Tick]:
        if time.monotonic() - self._cached[0] >= REFRESH_S:
            try:
                self.read()
            except BackendError:
                pass  # etcd itself may be the fault being injected: the last reading stands
        return list(self._cached[1])
