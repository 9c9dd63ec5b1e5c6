"""Tick precision: how late each tick's job starts, singleton beside the loops and schedulers users would pick.

    python bench/tick_precision.py [--ticks 120] [--no-busy] [--out docs/bench/tick-precision.md]

All contenders run at the same time, each in its own process (bench/tick_worker.py): singleton's leader (default
timings, run record on, one-member etcd on loopback), a naive `job(); sleep(1)` loop, a threading.Timer chain, an
asyncio call_later chain, APScheduler 3 (IntervalTrigger(seconds=1) started on a whole second, CronTrigger(second
='*')), and the practical limit: a bare loop sleeping to the next whole second. Then again with all but one core
kept busy by spinning processes. Lateness = the job's first line - the second it was meant for (the whole second
for aligned contenders; its own start + i seconds for the chains); drift = lateness of the last tick - of the
first. The first 2 ticks of each are warm-up and left out. Figures, never pass/fail.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import emit, machine, median, pct, require  # noqa: E402

from singleton.dev.embedded import EtcdCluster  # noqa: E402

WORKER = Path(__file__).resolve().parent / "tick_worker.py"
CONTENDERS = [("singleton", "singleton leader (etcd, run record on)"), ("bare", "bare whole-second loop"),
              ("aps_cron", "APScheduler 3 CronTrigger(second='*')"),
              ("aps_interval", "APScheduler 3 IntervalTrigger(seconds=1)"),
              ("naive", "naive `job(); time.sleep(1)`"), ("timer", "threading.Timer chain"),
              ("call_later", "asyncio call_later chain")]
WARMUP = 2


def spin() -> None:
    while True:
        pass


def session(endpoints: str, ticks: int, work: Path, busy: int) -> dict[str, list[tuple[float, float]]]:
    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(busy)]
    procs = {}
    try:
        for kind, _ in CONTENDERS:
            args = [sys.executable, str(WORKER), kind, str(ticks + WARMUP), str(work / f"{kind}.json")]
            procs[kind] = subprocess.Popen(args + ([endpoints] if kind == "singleton" else []))
        for kind, proc in procs.items():
            if proc.wait(ticks + 120) != 0:
                raise SystemExit(f"{kind} worker failed (exit {proc.returncode})")
    finally:
        for proc in [*spinners, *procs.values()]:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return {kind: json.loads((work / f"{kind}.json").read_text())[WARMUP:] for kind, _ in CONTENDERS}


def table(results: dict[str, list[tuple[float, float]]], title: str) -> list[str]:
    late = {k: [(s - t) * 1e3 for s, t in v] for k, v in results.items()}
    s99, bare99 = pct(late["singleton"], 99), pct(late["bare"], 99)
    lines = [f"**{title}**", "",
             "| contender | ticks | lateness p50 | p99 | max | drift over the run | p99 / singleton p99 |",
             "|---|---|---|---|---|---|---|"]
    for kind, label in CONTENDERS:
        values = late[kind]
        drift = values[-1] - values[0]
        lines.append(f"| {label} | {len(values)} | {median(values):.2f} ms | {pct(values, 99):.2f} ms "
                     f"| {max(values):.2f} ms | {drift:+.1f} ms | {pct(values, 99) / s99:.2f}× |")
    s50, bare50, cron50 = median(late["singleton"]), median(late["bare"]), median(late["aps_cron"])
    lines += ["", f"singleton p99 / bare loop p99: **{s99 / bare99:.1f}×** (goal ≤ 1.5×); APScheduler cron p99 / "
              f"singleton p99: **{pct(late['aps_cron'], 99) / s99:.1f}×** (goal ≥ 3×). At the median: singleton / "
              f"bare loop **{s50 / bare50:.2f}×**, APScheduler cron / singleton **{cron50 / s50:.1f}×**.", ""]
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ticks", type=int, default=120)
    parser.add_argument("--no-busy", action="store_true", help="skip the run with the other cores kept busy")
    parser.add_argument("--out", default="")
    args = parser.parse_args()
    require("apscheduler")
    busy = max(1, (os.cpu_count() or 2) - 1)
    lines = [machine() + f" at start; {args.ticks} ticks per contender, all contenders at once.", ""]
    with tempfile.TemporaryDirectory(prefix="singleton-bench-") as tmp, EtcdCluster(1, Path(tmp) / "etcd") as c:
        runs = [("idle", 0)] + ([] if args.no_busy else [(f"{busy} core(s) kept busy", busy)])
        for title, spinners in runs:
            work = Path(tmp) / title.split()[0]
            work.mkdir()
            started = time.monotonic()
            results = session(c.endpoints_arg, args.ticks, work, spinners)
            load = " ".join(f"{x:.2f}" for x in os.getloadavg())
            lines += table(results, f"{title} (load average at the end {load}; {time.monotonic() - started:.0f} s)")
    emit(lines, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
