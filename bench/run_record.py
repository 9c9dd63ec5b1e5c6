"""What the run record costs: tick-start lateness with the record off and on, and etcd requests per second.

    python bench/run_record.py [--ticks 60] [--out docs/bench/run-record.md]

One leader (default timings 10/3/2) on a local one-member etcd, in this process; its job notes the wall time of
its first line. Lateness = that time - the slot's whole second. etcd's own /metrics gives the requests served,
by gRPC method, over the same run. Prints a Markdown table (and writes it with --out). Figures, never pass/fail.
"""
from __future__ import annotations

import argparse
import os
import platform
import re
import statistics
import tempfile
import time
import urllib.request
from collections import Counter

from singleton import Config, Singleton, TickContext
from singleton.dev.embedded import EtcdCluster

# Request messages received (not calls handled: a keepalive stream lives across renewals and ends only with its term).
_HANDLED = re.compile(r'^grpc_server_msg_received_total\{[^}]*grpc_method="(\w+)"[^}]*\} (\S+)$', re.M)


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def etcd_requests(cluster: EtcdCluster) -> Counter[str]:
    endpoint = cluster.endpoints[0]
    with urllib.request.urlopen(f"http://{endpoint.target}/metrics", timeout=5) as response:
        text = response.read().decode()
    counts: Counter[str] = Counter()
    for method, value in _HANDLED.findall(text):
        counts[method] += int(float(value))
    return counts


def run(cluster: EtcdCluster, record: bool, ticks: int) -> tuple[list[float], Counter[str], float]:
    lateness_s: list[float] = []

    def job(ctx: TickContext) -> None:
        lateness_s.append(time.time() - ctx.slot)

    config = Config(endpoints=tuple(cluster.endpoints), name=f"bench-{'on' if record else 'off'}-{os.getpid()}",
                    replica_id=f"bench-{record}", run_record=record)
    app = Singleton(config, job)
    with app:
        deadline = time.monotonic() + 30
        while not lateness_s and time.monotonic() < deadline:
            time.sleep(0.05)
        before, started = etcd_requests(cluster), time.monotonic()
        first = len(lateness_s)
        while len(lateness_s) < first + ticks and time.monotonic() < started + ticks + 30:
            time.sleep(0.2)
        after, took = etcd_requests(cluster), time.monotonic() - started
    return lateness_s[first:first + ticks], after - before, took


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ticks", type=int, default=60)
    parser.add_argument("--out", default="")
    args = parser.parse_args()
    lines = [f"Machine: {platform.machine()}, {os.cpu_count()} cores, load average "
             f"{' '.join(f'{x:.2f}' for x in os.getloadavg())} at start; Python {platform.python_version()}; "
             f"{args.ticks} ticks per row, one leader at the default timings (10/3/2), one-member etcd on loopback.",
             "",
             "| run record | ticks | lateness p50 | p99 | max | etcd requests/s (by method) |",
             "|---|---|---|---|---|---|"]
    with tempfile.TemporaryDirectory(prefix="singleton-bench-") as tmp, EtcdCluster(1, tmp) as cluster:
        for record in (False, True):
            lateness, requests, took = run(cluster, record, args.ticks)
            if not lateness:
                raise SystemExit("no ticks: is etcd up?")
            per_s = ", ".join(f"{m} {n / took:.2f}" for m, n in sorted(requests.items()) if n)
            total = sum(requests.values()) / took
            lines.append(f"| {'on' if record else 'off'} | {len(lateness)} | {statistics.median(lateness) * 1e3:.2f} ms "
                         f"| {pct(lateness, 99) * 1e3:.2f} ms | {max(lateness) * 1e3:.2f} ms "
                         f"| {total:.2f} ({per_s}) |")
    table = "\n".join(lines)
    print(table)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            f.write(table + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
