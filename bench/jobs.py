"""Many jobs on one leader: start lateness per job with 1, 20 and 200 jobs, etcd transactions per second, and
where the leader's loop spends its time with 200 jobs.

    python bench/jobs.py [--seconds 30] [--counts 1,20,200] [--profile] [--out docs/bench/jobs.md]

One leader (default timings 10/3/2) on a local one-member etcd, in this process. Every job notes the wall time of
its first line; lateness = that time - its slot's instant. The every-second job `e1` is in every row (alone in the
first: the legacy `job=` path). The others mix intervals (0.25, 0.5, 1, 2, 5 s) and cron with seconds, so many are
due at the same instant (the worst case for the loop and the claims). `thread/run` rows repeat a row with a thread
started per run instead of the pre-started pool (the hand-off the pool removes). etcd's own /metrics gives the
transactions. Prints a Markdown table; figures, never pass/fail.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from run_record import etcd_requests, pct  # noqa: E402

from singleton import Config, Singleton, TickContext  # noqa: E402
from singleton.core.jobspec import build_job_spec  # noqa: E402
from singleton.dev.embedded import EtcdCluster  # noqa: E402
from singleton.runtime import jobs as jobs_module  # noqa: E402

MIX: list[dict[str, Any]] = [{"every": 0.25}, {"every": 0.5}, {"every": 1}, {"every": 2}, {"every": 5},
                             {"cron": "*/2 * * * * *"}, {"cron": "*/3 * * * * *", "tz": "Europe/Berlin"}]


def build(cluster: EtcdCluster, count: int, lateness: dict[str, list[float]], workers: int) -> Singleton:
    config = Config(endpoints=cluster.endpoints, name=f"bench-jobs-{count}-{os.getpid()}-{time.monotonic_ns()}",
                    replica_id="bench", workers=workers)

    def job(name: str) -> Any:
        series = lateness.setdefault(name, [])

        def run(ctx: TickContext) -> None:
            series.append(time.time() - ctx.scheduled_at)
        return run

    if count == 1:
        return Singleton(config, job("e1"))
    app = Singleton(config)
    app.add_job(build_job_spec("e1", every=1), job("e1"))
    for i in range(1, count):
        app.add_job(build_job_spec(f"j{i}", **MIX[i % len(MIX)]), job(f"j{i}"))
    return app


def measure(cluster: EtcdCluster, count: int, seconds: float, workers: int,
            profile: bool = False) -> tuple[dict[str, list[float]], float, float, Counter[str], str]:
    lateness: dict[str, list[float]] = {}
    app = build(cluster, count, lateness, workers)
    profiler = None
    thread = threading.Thread(target=app.run, kwargs={"handle_signals": False}, daemon=True)
    if profile:
        from pyinstrument import Profiler

        profiler = Profiler(interval=0.0005)
        thread = threading.Thread(target=lambda: (profiler.start(), app.run(handle_signals=False), profiler.stop()),
                                  daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not lateness.get("e1") and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(1.0)  # past the first second of the term
    for series in lateness.values():
        series.clear()
    before, started = etcd_requests(cluster), time.monotonic()
    cpu_before = time.process_time()
    time.sleep(seconds)
    after, took = etcd_requests(cluster), time.monotonic() - started
    cpu = (time.process_time() - cpu_before) / took
    snapshot = {k: list(v) for k, v in lateness.items()}
    pool_full = app.stats.missed_slots["pool_full"]
    app.stop()
    thread.join(30)
    text = ""
    if profiler is not None:
        text = profiler.output_text(unicode=False, color=False, show_all=False)
    requests = after - before
    requests["pool_full"] = pool_full
    return snapshot, took, cpu, requests, text


def row(label: str, count: int, lateness: dict[str, list[float]], took: float, cpu: float,
        requests: Counter[str]) -> str:
    e1 = lateness.get("e1", [])
    every = [x for v in lateness.values() for x in v]
    worst = max((pct(v, 99), k) for k, v in lateness.items() if v)
    runs = sum(len(v) for v in lateness.values()) / took
    return (f"| {label} | {count} | {statistics.median(e1) * 1e3:.2f} / {pct(e1, 99) * 1e3:.2f} ms "
            f"| {statistics.median(every) * 1e3:.2f} / {pct(every, 99) * 1e3:.2f} ms "
            f"| {worst[0] * 1e3:.2f} ms ({worst[1]}) | {runs:.1f} | {requests['Txn'] / took:.2f} "
            f"| {requests['pool_full']} | {cpu * 100:.0f}% |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--counts", default="1,20,200")
    parser.add_argument("--workers", type=int, default=64, help="pool size for the rows with many jobs")
    parser.add_argument("--profile", action="store_true", help="pyinstrument the loop thread with the most jobs")
    parser.add_argument("--out", default="")
    args = parser.parse_args()
    counts = [int(c) for c in args.counts.split(",")]
    lines = [f"Machine: {platform.machine()}, {os.cpu_count()} cores, load average "
             f"{' '.join(f'{x:.2f}' for x in os.getloadavg())} at start (shared with other work); Python "
             f"{platform.python_version()}; {args.seconds:g} s per row, one leader at the default timings, one-member "
             f"etcd on loopback; workers {args.workers} (8 for the single job).", "",
             "| pool | jobs | e1 (every second) p50 / p99 | all jobs p50 / p99 | worst job p99 | runs/s | etcd Txn/s "
             "| pool_full | process CPU |",
             "|---|---|---|---|---|---|---|---|---|"]
    profile_text = ""
    with tempfile.TemporaryDirectory(prefix="singleton-bench-") as tmp, EtcdCluster(1, tmp) as cluster:
        original = jobs_module.JobRunner.__init__
        for count in counts:
            workers = 8 if count == 1 else args.workers
            lateness, took, cpu, requests, text = measure(cluster, count, args.seconds, workers,
                                                          profile=args.profile and count == max(counts))
            profile_text = text or profile_text
            lines.append(row("pre-started", count, lateness, took, cpu, requests))
            print(lines[-1], flush=True)
            if count in (1, max(counts)):

                def thread_per_run(self: Any, *a: Any, **kw: Any) -> None:
                    kw["pool"] = None
                    original(self, *a, **kw)

                jobs_module.JobRunner.__init__ = thread_per_run  # type: ignore[method-assign]
                try:
                    lateness, took, cpu, requests, _ = measure(cluster, count, args.seconds, workers)
                finally:
                    jobs_module.JobRunner.__init__ = original  # type: ignore[method-assign]
                lines.append(row("thread/run", count, lateness, took, cpu, requests))
                print(lines[-1], flush=True)
    table = "\n".join(lines)
    print(table)
    if profile_text:
        print(profile_text)
    if args.out:
        Path(args.out).write_text(table + "\n" + (f"\n```\n{profile_text}\n```\n" if profile_text else ""),
                                  encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
