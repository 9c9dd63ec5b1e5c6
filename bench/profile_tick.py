"""Where a leader's time goes on each tick, from its wake-up to the job's first line; and where its CPU goes.

    python bench/profile_tick.py [--ticks 60] [--py-spy-s 60] [--out docs/bench/profile.md]

1. Stages, timed in this process on a real leader (default timings, run record on, one-member etcd): the bench
   wraps (never edits) the tick path's functions with a clock read at their entry. A sync run is armed at its claim
   (runtime.arming): its worker wakes from its own timed wait (Armed.decide: the in-memory check), then
   JobRunner._run_sync, then the job's own first line. A run the loop starts itself (not armed: async, or disarmed
   and judged again) goes through the loop's last check after its wake-up (ticker.check_due returning "run") and
   JobRunner.start (the hand-off) instead; trees before arming only have that path. Lateness of each against the
   slot's whole second.
2. CPU, sampled by py-spy (PyPI) on a separate `singleton run` leader for --py-spy-s seconds (0: skip):
   samples by function, own time and with callees, busiest first. Figures, never pass/fail.
"""
from __future__ import annotations

import argparse
import collections
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import emit, machine, median, pct  # noqa: E402

import importlib  # noqa: E402
from singleton import Config, Singleton, TickContext  # noqa: E402
from singleton.core.ticker import Verdict  # noqa: E402
from singleton.dev.embedded import EtcdCluster  # noqa: E402
from singleton.dev.ledger import LEDGER_ENV  # noqa: E402
from singleton.runtime.jobs import JobRunner  # noqa: E402

WAITS = {"Condition.wait", "Event.wait", "Queue.get", "_wait_once", "wait", "channel_spin",
         "_run_channel_spin_thread.<locals>.channel_spin", "select", "sleep", "poll"}
STAGES = ["loop path: ticker decides to run (check_due)", "loop path: hand-off starts (JobRunner.start)",
          "armed path: worker wakes at the instant (Armed.decide)", "worker's first line (JobRunner._run_sync)",
          "job's first line"]
ARMED, RUN_SYNC, FIRST_LINE = STAGES[2], STAGES[3], STAGES[4]


def _module(name: str) -> object | None:
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


def stages(endpoints: tuple, ticks: int) -> tuple[dict[str, dict[int, float]], int]:
    marks: dict[int, dict[str, float]] = collections.defaultdict(dict)
    # The tick loop lives in runtime/ticking.py (many jobs) or, in older trees, runtime/leadership.py.
    loop = next(m for m in (_module("singleton.runtime.ticking"), _module("singleton.runtime.leadership"))
                if m is not None and hasattr(m, "check_due"))
    original_check_due, original_start = loop.check_due, JobRunner.start
    original_run_sync = getattr(JobRunner, "_run_sync", None)
    arming = _module("singleton.runtime.arming")
    armed_cls = getattr(arming, "Armed", None)
    original_decide = getattr(armed_cls, "decide", None)

    def check_due(plan, wall, *rest):  # type: ignore[no-untyped-def]
        now = time.time()
        due = original_check_due(plan, wall, *rest)
        if due.verdict is Verdict.RUN:
            marks[plan.slot][STAGES[0]] = now
        return due

    def start(self, ctx):  # type: ignore[no-untyped-def]
        marks[ctx.slot][STAGES[1]] = time.time()
        return original_start(self, ctx)

    def run_sync(self, tick):  # type: ignore[no-untyped-def]
        marks[tick.ctx.slot][RUN_SYNC] = time.time()
        return original_run_sync(self, tick)

    def decide(self, now):  # type: ignore[no-untyped-def]
        marks[self.slot][ARMED] = time.time()
        return original_decide(self, now)

    done = threading.Event()

    def job(ctx: TickContext) -> None:
        marks[ctx.slot][FIRST_LINE] = time.time()
        if sum(1 for m in marks.values() if FIRST_LINE in m) >= ticks + 2:
            done.set()

    loop.check_due = check_due
    JobRunner.start = start  # type: ignore[method-assign]
    if original_run_sync is not None:
        JobRunner._run_sync = run_sync  # type: ignore[method-assign]
    if original_decide is not None:
        armed_cls.decide = decide
    try:
        with Singleton(Config(endpoints=endpoints, name=f"profile-{os.getpid()}", replica_id="profile"), job):
            done.wait(ticks + 60)
    finally:
        loop.check_due, JobRunner.start = original_check_due, original_start  # type: ignore[method-assign]
        if original_run_sync is not None:
            JobRunner._run_sync = original_run_sync  # type: ignore[method-assign]
        if original_decide is not None:
            armed_cls.decide = original_decide
    slots = sorted(s for s, m in marks.items() if FIRST_LINE in m)[2:]  # the first two are warm-up
    out = {stage: {s: (marks[s][stage] - s) * 1e3 for s in slots if stage in marks[s]} for stage in STAGES}
    return out, len(slots)


def py_spy(endpoints: str, seconds: float, work: Path) -> list[str]:
    if shutil.which("py-spy") is None:
        return ["py-spy is not installed (pip install -e '.[bench]'): CPU profile skipped."]
    env = {**os.environ, LEDGER_ENV: str(work / "ledger.jsonl")}
    cmd = [sys.executable, "-m", "singleton", "run", "--endpoints", endpoints, "--name", "profile-spy",
           "--job", "singleton.dev.ledger:record_tick", "--id", "spy", "--http-port", "0"]
    leader = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    raw = work / "spy.txt"
    try:
        time.sleep(8)  # elected and ticking
        cpu_before, t0 = _cpu_s(leader.pid), time.monotonic()
        spy = subprocess.run(["py-spy", "record", "--pid", str(leader.pid), "--duration", str(int(seconds)),
                              "--rate", "250", "--format", "raw", "--nonblocking", "--output", str(raw)],
                             capture_output=True, text=True, timeout=seconds + 60)
        cpu_share = (_cpu_s(leader.pid) - cpu_before) / (time.monotonic() - t0)
    finally:
        leader.terminate()
        leader.wait(30)
    if spy.returncode != 0 or not raw.exists():
        return [f"py-spy failed ({spy.returncode}): {spy.stderr.strip().splitlines()[-1:]}"]
    own: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    total = waiting = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        n = int(count)
        frames = [f.split(" (")[0] + " (" + f.split(" (")[-1].split(":")[0].rsplit("/", 1)[-1] + ")"
                  for f in stack.split(";")[1:]]  # [0] is the process/thread
        total += n
        if not frames or frames[-1].split(" (")[0] in WAITS:
            waiting += n  # a thread parked in a (timed) wait: py-spy's idle test misses these
            continue
        own[frames[-1]] += n
        for frame in set(frames):
            incl[frame] += n
    busy = total - waiting
    lines = [f"py-spy, {seconds:g} s at 250 Hz on a `singleton run` leader (ledger job, run record on): {total} "
             f"samples py-spy counted as not idle, of which {waiting} were threads parked in a timed wait (gRPC's "
             f"100 ms `Condition.wait` polls, its channel spin thread): {busy} samples of work = "
             f"{busy / 250 / seconds * 1e3:.2f} ms per tick. The kernel's count for the same window (py-spy's own "
             f"share included): {cpu_share * 100:.2f} % of a core = {cpu_share * 1e3:.2f} ms of CPU per tick.", "",
             "Where the work samples are (the busiest functions, with their callees):", "",
             "| function (file) | own samples | with callees |", "|---|---|---|"]
    for frame, n in incl.most_common(30):
        lines.append(f"| `{frame}` | {own[frame]} | {n} ({n / max(1, busy) * 100:.0f} %) |")
    return lines


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ticks", type=int, default=60)
    parser.add_argument("--py-spy-s", type=float, default=60.0)
    parser.add_argument("--out", default="")
    args = parser.parse_args()
    lines = [machine() + f" at start; {args.ticks} ticks.", "",
             "| stage (time since the slot's whole second) | p50 | p99 | max |", "|---|---|---|---|"]
    with tempfile.TemporaryDirectory(prefix="singleton-bench-") as tmp, EtcdCluster(1, Path(tmp) / "etcd") as c:
        found, n = stages(tuple(c.endpoints), args.ticks)
        previous: dict[int, float] | None = None
        for stage in STAGES:
            found_at = found[stage]
            if not found_at:
                lines.append(f"| {stage} | n/a (not on this code's path) | | |")
                continue
            values = list(found_at.values())
            lines.append(f"| {stage} ({len(values)} ticks) | {median(values):.3f} ms | {pct(values, 99):.3f} ms "
                         f"| {max(values):.3f} ms |")
            common = [s for s in found_at if previous is not None and s in previous]
            if previous is not None and common:  # per slot, for the ticks that went through both stages
                steps = [found_at[s] - previous[s] for s in common]
                lines.append(f"| … step from the previous stage | {median(steps):.3f} ms | {pct(steps, 99):.3f} ms "
                             f"| {max(steps):.3f} ms |")
            previous = found_at
        lines.append("")
        if args.py_spy_s > 0:
            lines += py_spy(c.endpoints_arg, args.py_spy_s, Path(tmp))
    emit(lines, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
