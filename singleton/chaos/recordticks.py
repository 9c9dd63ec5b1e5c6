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
from singleton.core.security import Credentials
from singleton.dev.ledger import Tick
from singleton.dev.replicas import ReplicaSet
from singleton.ops.history import read_runs
from singleton.v1.run_pb2 import RunEntry, RunRecord

RAN = ("ok", "failed", "cancelled")  # outcomes of runs that ended (skipped and late ones never started)
REFRESH_S = 0.1  # the harness polls ticks every 10-50 ms; etcd is read at most this often


def ticks_from_record(record: RunRecord | None, entries: list[RunEntry], wall_minus_mono: float,
                      now_wall: float, guess_running_done: bool = True) -> list[Tick]:
    """The finished and unknown runs of the history, plus the claimed run that has started, as ticks.
    An `unknown` run (its leader died before reporting it) has no end; nor has the current one, unless
    `guess_running_done` (for timing faults between runs, never for the verdict) and it has run longer than
    the job's recent runs took."""
    ticks = []
    for e in entries:
        if e.outcome not in (*RAN, "unknown"):
            continue
        start_wall = e.started_at_unix_s or float(e.slot)  # an unknown run's start was never reported
        start = start_wall - wall_minus_mono
        end = start + e.duration_s if e.outcome in RAN else None
        ticks.append(Tick(e.replica_id, 0, e.fencing_token, e.slot, start, start_wall, end))
    reported = {e.seq for e in entries}
    if record is not None and record.seq not in reported and now_wall >= record.slot:
        # The run of the standing claim: started at its slot's second. Finished, as far as a fault's timing is
        # concerned, once the job's longest recent run time has passed (its end is reported with the next claim).
        durations = [e.duration_s for e in entries[-5:] if e.outcome in RAN]
        start = record.slot - wall_minus_mono
        done = guess_running_done and durations and now_wall - record.slot > max(durations) + 0.05
        ticks.append(Tick(record.replica_id, 0, record.fencing_token, record.slot, start, float(record.slot),
                          start + max(durations) if done else None))
    return sorted(ticks, key=lambda t: t.start_mono)


class RecordReplicaSet(ReplicaSet):
    """Replica processes running the user's job; `ticks()` reads the run record from etcd instead of a ledger."""

    def __init__(self, workdir: Path, config: Config, credentials: Credentials | None, extra_args: list[str],
                 history_size: int) -> None:
        super().__init__(workdir, "", config.name, extra_args)
        self.config, self.credentials, self.history_size = config, credentials, history_size
        self.wall_minus_mono = time.time() - time.monotonic()
        self._cached: tuple[float, list[Tick]] = (float("-inf"), [])
        self.record: RunRecord | None = None
        self.history: list[RunEntry] = []

    def read(self) -> None:
        """Read the record and history now (raises BackendError)."""
        backend = EtcdBackend(self.config.endpoints, credentials=self.credentials)
        try:
            record, newest_first = read_runs(backend, self.config, self.history_size, timeout_s=5.0)
        finally:
            backend.close()
        self.record, self.history = record, sorted(newest_first, key=lambda e: e.seq)
        ticks = ticks_from_record(record, self.history, self.wall_minus_mono, time.time())
        self._cached = (time.monotonic(), ticks)

    def final_ticks(self) -> list[Tick]:
        """For the verdict, read once more: the run still claimed at the end counts as unfinished."""
        self.read()
        return ticks_from_record(self.record, self.history, self.wall_minus_mono, time.time(),
                                 guess_running_done=False)

    def ticks(self) -> list[Tick]:
        if time.monotonic() - self._cached[0] >= REFRESH_S:
            try:
                self.read()
            except BackendError:
                pass  # etcd itself may be the fault being injected: the last reading stands
        return list(self._cached[1])
