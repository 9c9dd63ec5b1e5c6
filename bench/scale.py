"""Scale: N singleton replicas against one 3-member etcd on this machine.

    python bench/scale.py [--replicas 50] [--crashes 3] [--window-s 30] [--out docs/bench/scale.md]

Starts N `singleton run` replicas at once (default timings), then reports: time from the start to the first
tick; etcd requests per second in steady state (summed over the members' own /metrics, by gRPC method, and per
replica); RSS of all replicas; crash failover (SIGKILL the leader -> first tick elsewhere) and what one leader's
death costs etcd (lease grants, transactions, revokes in the 15 s after it: one campaign per standby, or O(1)).
Figures, never pass/fail.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import emit, etcd_counts, machine, median  # noqa: E402
from footprint import RECEIVED, sample  # noqa: E402
from holders import Holders  # noqa: E402

from singleton.dev.embedded import EtcdCluster  # noqa: E402


def all_members(cluster: EtcdCluster, metric: str = RECEIVED) -> Counter[str]:
    total: Counter[str] = Counter()
    for endpoint in cluster.endpoints:
        total += etcd_counts(endpoint.target, metric)
    return total


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replicas", type=int, default=50)
    parser.add_argument("--crashes", type=int, default=3)
    parser.add_argument("--window-s", type=float, default=30.0)
    parser.add_argument("--out", default="")
    args = parser.parse_args()
    if args.replicas < 2:
        parser.error("--replicas: at least 2")
    lines = [machine() + f" at start; {args.replicas} replicas, 3-member etcd, all on this machine.", ""]
    with tempfile.TemporaryDirectory(prefix="singleton-bench-") as tmp, EtcdCluster(3, Path(tmp) / "etcd") as c:
        h = Holders("singleton", c.endpoints[0].target, Path(tmp), "scale", proxied=False,
                    endpoints=c.endpoints_arg)
        try:
            started = time.monotonic()
            for _ in range(args.replicas):
                h.start()
            first = h.first_tick_after(started, "", 120)
            if first is None:
                raise SystemExit(f"no tick within 120 s of starting {args.replicas} replicas; logs in {tmp}")
            first_s = first.start_mono - started
            time.sleep(10)  # every replica up and standing by
            before, t0 = all_members(c), time.monotonic()
            time.sleep(args.window_s)
            steady = all_members(c) - before
            took = time.monotonic() - t0
            rss = sum(sample(p.pid)[1] for p in h.procs.values()) / 1024
            crash_s, herd = [], []
            for _ in range(args.crashes):
                old = h.wait_ticking(60)
                before = all_members(c)
                sent = time.monotonic()
                h.signal(old.replica, signal.SIGKILL)
                new = h.first_tick_after(sent, old.replica, 60)
                if new is None:
                    raise SystemExit(f"no takeover within 60 s; logs in {tmp}")
                crash_s.append(new.start_mono - sent)
                time.sleep(max(0.0, sent + 15 - time.monotonic()))
                herd.append(all_members(c) - before)
                h.remove(old.replica)
                h.start()
        finally:
            h.stop_all()
    per_s = ", ".join(f"{m} {n / took:.1f}" for m, n in sorted(steady.items()) if n)
    total = sum(steady.values()) / took
    lines += ["| measure | figure |", "|---|---|",
              f"| start of {args.replicas} replicas → first tick | {first_s:.2f} s |",
              f"| etcd requests/s, steady, all members | {total:.1f} ({total / args.replicas:.2f} per replica): "
              f"{per_s} |",
              f"| RSS of all replicas | {rss:.0f} MB ({rss / args.replicas:.0f} MB each) |",
              f"| crash failover (SIGKILL → first tick elsewhere), {len(crash_s)} rounds | p50 {median(crash_s):.2f} s,"
              f" max {max(crash_s):.2f} s |"]
    for method in ("LeaseGrant", "Txn", "LeaseRevoke", "Range"):
        counts = [d[method] for d in herd]
        lines.append(f"| {method} requests in the 15 s after a leader's death | "
                     f"{'/'.join(str(n) for n in counts)} (one per round) |")
    lines += ["", f"Load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}."]
    emit(lines, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
