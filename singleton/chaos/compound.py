"""Faults of the compound scenarios: a handover from a leader whose wall clock is ahead, a job that hangs and
ignores its cancel under a kubelet-like liveness prober, and (with slow callbacks) a partition.

The replicas these need (slow callbacks, a job timeout, a /healthz port each) are set per scenario by
ReplicaOptions in scenarios.py; the faults here only inject and watch.
"""
from __future__ import annotations

import signal
import threading
import time
import urllib.error
import urllib.request

from singleton.chaos.faults import _signal_leader
from singleton.chaos.harness import FaultEvent, Harness

# The hung-job scenario's `--job-timeout` and `--job-cancel-grace`: the replica steps down (job_hung)
# this long after the hung tick started.
JOB_TIMEOUT_S = 1.0
JOB_CANCEL_GRACE_S = 1.0
PROBE_FAILURES = 2  # a kubelet's failureThreshold
HUNG_KILL_TIMEOUT_S = 20.0  # how long the hung-job fault waits for the prober to act


def _sigterm_clock_ahead(h: Harness, name: str, ahead_s: int) -> FaultEvent:
    """Step the leader's wall clock forward, let it tick on it, then stop it gracefully: its handover
    names a slot ahead of every other replica's clock."""
    leader = h.leader()
    h.clock_files[leader].write_text(str(ahead_s))
    time.sleep(2.5)  # a couple of ticks numbered by the stepped clock
    event = _signal_leader(h, name, "graceful", signal.SIGTERM)
    event.detail = f"{event.target}'s wall clock +{ahead_s} s"
    return event


def sigterm_leader_clock_ahead_30s(h: Harness) -> FaultEvent:
    return _sigterm_clock_ahead(h, "sigterm-leader-clock-ahead-30s", 30)


def sigterm_leader_clock_ahead_1h(h: Harness) -> FaultEvent:
    return _sigterm_clock_ahead(h, "sigterm-leader-clock-ahead-1h", 3600)


class LivenessProber:
    """What a kubelet does: GET each replica's /healthz every `period_s`; after PROBE_FAILURES answers of
    503 in a row, SIGKILL the replica and start a new one in its place (the pod restart)."""

    def __init__(self, h: Harness, period_s: float) -> None:
        self.h, self.period_s = h, period_s
        self._stop = threading.Event()
        self._failures: dict[str, int] = {}
        self._thread = threading.Thread(target=self._loop, daemon=True, name="chaos-liveness-prober")

    def start(self) -> LivenessProber:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def _probe(self, port: int) -> int | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=self.period_s) as resp:
                return int(resp.status)
        except urllib.error.HTTPError as err:
            return int(err.code)
        except OSError:
            return None  # not listening yet, or gone: a startup probe's business, not this one's

    def _loop(self) -> None:
        h = self.h
        while not self._stop.wait(self.period_s):
            assert h.replicas is not None and h.run is not None
            for replica in h.alive():
                port = h.http_ports.get(replica)
                status = self._probe(port) if port else None
                if status is None:
                    continue
                h.run.probes.append((time.monotonic(), replica, status))
                self._failures[replica] = self._failures.get(replica, 0) + 1 if status == 503 else 0
                if self._failures[replica] >= PROBE_FAILURES:
                    h.replicas.signal(replica, signal.SIGKILL)
                    h.replicas.procs[replica].wait(10)
                    h.run.kills[replica] = time.monotonic()
                    h.start_replica(in_place_of=replica)  # the restarted pod: a new process, a new replica id


def hang_leader_job(h: Harness) -> FaultEvent:
    """Arm the ledger's hang: the leader's next tick never returns and ignores its cancel. The replica
    must step down (job_hung) keeping its lease until it lapses, answer /healthz 503, and be restarted."""
    prober = LivenessProber(h, h.timings.keepalive_interval_s / 2).start()
    try:
        leader = h.leader()
        event = h.record(FaultEvent("hang-leader-job", "hung", time.monotonic(), leader, old_leader=leader,
                                    detail=f"job timeout {JOB_TIMEOUT_S:g} s, cancel grace {JOB_CANCEL_GRACE_S:g} s"))
        h.hang_file.write_text("")
        assert h.run is not None
        deadline = time.monotonic() + HUNG_KILL_TIMEOUT_S
        while leader not in h.run.kills and time.monotonic() < deadline:
            time.sleep(0.05)
        event.healed_at_mono = h.run.kills.get(leader, time.monotonic())
        h.wait_tick(event.at_mono, h.timings.lease_ttl_s + 5, exclude=leader)
        time.sleep(2 * h.timings.keepalive_interval_s)  # go on probing: a healthy replica must not be killed
    finally:
        prober.stop()
        if h.hang_file.exists():
            h.hang_file.unlink()  # never claimed: disarm, so no later tick hangs
    return event


COMPOUND_FAULTS = {f.__name__.replace("_", "-"): f for f in (
    sigterm_leader_clock_ahead_30s, sigterm_leader_clock_ahead_1h, hang_leader_job)}
