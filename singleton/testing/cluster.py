"""A replica set running the user's own job on a real etcd, with fault injectors and the chaos verdict: what
the pytest plugin's `singleton_cluster` fixture hands a test (see testing/pytest_plugin.py).

The verdict is the `singleton chaos --job` one: judged from etcd's run record and history and the harness's own
watch of the leader key, never from the replicas' word, and the job need not write anything of ours.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

from singleton.chaos.harness import EtcdAccess, Harness, ReplicaOptions, ScenarioRun
from singleton.chaos.verdict import Verdict, judge
from singleton.core.config import Endpoint
from singleton.core.timings import DEFAULT, FAST, Timings
from singleton.v1.run_pb2 import RunEntry


class SingletonCluster:
    """`replicas` processes of `singleton run --job JOB` (fast timings by default: a 3 s lease)."""

    def __init__(self, workdir: Path, endpoints: list[Endpoint], job: str, *, replicas: int = 3, fast: bool = True,
                 args: tuple[str, ...] = (), access: EtcdAccess | None = None, pythonpath: str = "") -> None:
        self.timings: Timings = FAST if fast else DEFAULT
        self.job, self.replica_count = job, replicas
        self._harness = Harness(workdir, endpoints=endpoints, replicas=replicas, timings=self.timings, job=job,
                                access=access)
        # The job's package is importable where the tests run; the replicas run from there too.
        path = os.pathsep.join(p for p in (pythonpath, os.environ.get("PYTHONPATH", "")) if p)
        self._options = ReplicaOptions(args=tuple(args), env=(("PYTHONPATH", path),) if path else ())
        self._run: ScenarioRun | None = None
        self._verdict: Verdict | None = None

    def start(self, timeout_s: float = 30.0) -> SingletonCluster:
        self._run = self._harness.begin("pytest", self._options)
        for _ in range(self.replica_count):
            self._harness.start_replica()
        if self._harness.wait_tick(self._run.started_mono, timeout_s) is None:
            raise AssertionError(f"no replica ran {self.job} within {timeout_s:g} s; logs in {self._run.workdir}")
        return self

    # --- what a test looks at -------------------------------------------------------------------------
    @property
    def workdir(self) -> Path:
        assert self._run is not None
        return self._run.workdir

    def leader(self) -> str:
        """The replica whose run is the latest (from the run record), between two runs."""
        return self._harness.leader()

    def wait_runs(self, n: int, timeout_s: float = 30.0) -> None:
        """Wait until `n` more runs have started (as the run record tells)."""
        after = time.monotonic()
        for _ in range(n):
            tick = self._harness.wait_tick(after, timeout_s)
            if tick is None:
                raise AssertionError(f"fewer than {n} runs of {self.job} within {timeout_s:g} s; "
                                     f"logs in {self.workdir}")
            after = tick.start_mono

    def log(self, replica: str) -> str:
        return (self.workdir / f"{replica}.log").read_text(errors="replace")

    # --- faults: each injects, heals, and waits for the job to run again ------------------------------
    def kill_leader(self) -> None:
        """SIGKILL the leader (a crash; restarted in its place): a standby runs within lease + 1 s."""
        self._fault("sigkill-leader")

    def terminate_leader(self) -> None:
        """SIGTERM the leader (a graceful stop; restarted): a standby runs the very next second."""
        self._fault("sigterm-leader")

    def pause_leader(self) -> None:
        """SIGSTOP the leader for longer than its lease, then SIGCONT: it must not run on the dead lease."""
        self._fault("sigstop-leader")

    def partition_leader(self) -> None:
        """Blackhole the leader's connections to etcd for longer than its lease, then heal them."""
        self._fault("partition-leader")

    def _fault(self, name: str) -> None:
        from singleton.chaos.faults import FAULTS

        assert self._run is not None and self._verdict is None, "start() first; no faults after verdict()"
        FAULTS[name](self._harness)

    # --- the verdict ------------------------------------------------------------------------------------
    def verdict(self) -> Verdict:
        """Stop the replicas and judge: no slot twice, no two runs at once, tokens grow, takeovers within their
        bounds, the job ran again after every fault, no lease left behind, no run of the job failed."""
        if self._verdict is None:
            assert self._run is not None, "start() first"
            self._verdict = judge(self._harness.end(), self.timings)
        return self._verdict

    @property
    def history(self) -> list[RunEntry]:
        """etcd's history of the runs (after verdict())."""
        run = self._run
        return list(run.history or []) if run is not None and self._verdict is not None else []

    def assert_held(self) -> None:
        verdict = self.verdict()
        assert verdict.held, f"{self.job}: {'; '.join(verdict.violations)} (logs in {self.workdir})"

    def close(self) -> None:
        self._harness.close()
