"""Failover and lateness figures on a local etcd with real `singleton run` processes.

    python bench/failover.py [--graceful 5] [--crash 3] [--steady-s 180] [--fast]

Prints: graceful handover gap (old leader's last tick start -> new leader's first tick start, and
seconds missed), crash failover time (SIGKILL -> first tick of the new leader), and tick lateness
(tick start - slot time) p50/p99/max over every tick of the run. Invariants are checked on the ledger.
"""
from __future__ import annotations

import argparse
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

from singleton.dev.embedded import EtcdCluster
from singleton.dev.ledger import Tick, duplicate_slots, overlaps
from singleton.core.timings import DEFAULT, FAST
from singleton.dev.replicas import ReplicaSet


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def takeover(rs: ReplicaSet, sig: int, bound_s: float) -> tuple[Tick, Tick, float]:
    old_tick = rs.quiet_moment(timeout_s=30)
    rs.signal(old_tick.replica, sig)
    sent = time.monotonic()
    new = rs.first_tick_after(sent, bound_s, exclude=old_tick.replica)
    if new is None:
        raise SystemExit(f"no takeover within {bound_s} s; logs in {rs.workdir}")
    return old_tick, new, sent


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--graceful", type=int, default=5)
    ap.add_argument("--crash", type=int, default=3)
    ap.add_argument("--steady-s", type=float, default=60.0, help="steady ticking measured before the faults")
    ap.add_argument("--fast", action="store_true", help=f"timings {FAST} instead of {DEFAULT}")
    args = ap.parse_args()
    timings = FAST if args.fast else DEFAULT
    ttl = timings.lease_ttl_s
    work = Path(tempfile.mkdtemp(prefix="singleton-bench-"))
    graceful_gaps, graceful_missed, crash_times = [], [], []
    with EtcdCluster(1, work / "etcd") as cluster:
        rs = ReplicaSet(work, cluster.endpoints_arg, "bench", timings.cli_args())
        n = 0
        try:
            for _ in range(3):
                rs.start(f"r{n}")
                n += 1
            rs.wait_ticks(2, 30)
            print(f"timings: {timings}; steady ticking for {args.steady_s:g} s ...", flush=True)
            time.sleep(args.steady_s)
            for kind, count, sig in (("graceful", args.graceful, signal.SIGTERM), ("crash", args.crash, signal.SIGKILL)):
                for _ in range(count):
                    old, new, sent = takeover(rs, sig, ttl + 5)
                    if kind == "graceful":
                        last_old = max(t.slot for t in rs.ticks() if t.replica == old.replica)
                        graceful_gaps.append(new.start_mono - old.start_mono)
                        graceful_missed.append(new.slot - last_old - 1)
                    else:
                        crash_times.append(new.start_mono - sent)
                    print(f"{kind}: {old.replica} -> {new.replica} in {new.start_mono - sent:.3f} s after the signal, "
                          f"slot {new.slot}", flush=True)
                    rs.procs[old.replica].wait(30)
                    rs.start(f"r{n}")  # keep 3 replicas
                    n += 1
                    rs.wait_ticks(3, 10, after=time.monotonic())
        finally:
            rs.stop_all()
    ticks = rs.ticks()
    lateness = [t.start_wall - t.slot for t in ticks]
    print(f"\nticks: {len(ticks)}; overlaps: {len(overlaps(ticks))}; slots run twice: {len(duplicate_slots(ticks))}")
    print(f"tick lateness: p50 {pct(lateness, 50) * 1000:.2f} ms, p99 {pct(lateness, 99) * 1000:.2f} ms, "
          f"max {max(lateness) * 1000:.2f} ms")
    if graceful_gaps:
        print(f"graceful handover: gap between ticks p50 {statistics.median(graceful_gaps):.3f} s, "
              f"max {max(graceful_gaps):.3f} s; seconds missed: {sum(graceful_missed)} in {len(graceful_gaps)}")
    if crash_times:
        print(f"crash failover (SIGKILL -> first tick): p50 {statistics.median(crash_times):.2f} s, "
              f"max {max(crash_times):.2f} s (lease {ttl:g} s)")
    return 0 if not overlaps(ticks) and not duplicate_slots(ticks) else 1


if __name__ == "__main__":
    sys.exit(main())
