"""Sharding at scale: R sharded replicas x G one-second jobs (one group each) against one 3-member etcd, all on
this machine.

    python bench/shard_scale.py [--sizes 10x100,25x250,50x500] [--crashes 3] [--window-s 20]
                                [--out docs/bench/shard-scale.md]

Per size, on a fresh key space of the same 3-member etcd, R replicas (chaos/shardreplica.py: `Singleton(Config(
shard=True))`, default timings 10/3/2, jobs g000.. every second, each run appends a line to a ledger) are started
at once, then: time until every group is led (etcd's watch of the groups' keys) and has ticked (the ledger), and
until the groups are spread (no replica over ceil(G/R) + 1); over a steady window: runs/s against the G/s due,
start lateness (wall time of the run's first line minus its second), etcd requests/s by gRPC method (the members'
own /metrics, grpc_server_handled_total), etcd's CPU and the replicas' (utime + stime from /proc/<pid>/stat, in
cores), the replicas' RSS, and the whole machine's busy share (/proc/stat: other sessions' work included); then
crash failover: kill -9 the replica leading the most groups, and for each group it led the time until its first
run elsewhere (a replacement is started after each round). Figures, never pass/fail.
"""
from __future__ import annotations

import argparse
import math
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import emit, etcd_counts, machine, median, pct  # noqa: E402

from singleton.backends.etcd import EtcdBackend  # noqa: E402
from singleton.chaos.shardreplica import LedgerTail  # noqa: E402
from singleton.core.config import Config  # noqa: E402
from singleton.core.errors import BackendError  # noqa: E402
from singleton.core.records import decode_leader  # noqa: E402
from singleton.dev.embedded import EtcdCluster  # noqa: E402

PREFIX = "/bench-shard"
RECEIVED = "grpc_server_msg_received_total"
CRASH_WAIT_S = 30.0  # an orphaned group not run elsewhere by then is counted as such (the lease is 10 s)
TICK_S = os.sysconf("SC_CLK_TCK")


def proc_cpu_rss(pid: int) -> tuple[float, int]:
    """(CPU seconds, RSS kB) of one process (0, 0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        rss = next((int(line.split()[1]) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                    if line.startswith("VmRSS:")), 0)
    except OSError:
        return 0.0, 0
    return (int(fields[11]) + int(fields[12])) / TICK_S, rss


def machine_busy() -> tuple[float, float]:
    """(busy, total) jiffies of the whole machine, from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]
    return float(sum(values) - idle), float(sum(values))


class GroupWatch:
    """Who leads each group, as etcd's watch of `<prefix>/<name>/groups/` says."""

    def __init__(self, cluster: EtcdCluster, name: str) -> None:
        self.prefix = Config(endpoints=tuple(cluster.endpoints), name=name, prefix=PREFIX).groups_prefix
        self.backend = EtcdBackend(cluster.endpoints)
        self.leaders: dict[str, str] = {}
        self.ever_led: set[str] = set()  # a handover deletes the key before the successor puts its own
        self.stop = threading.Event()
        self._lock = threading.Lock()
        for attempt in range(12):  # etcd starved of CPU by the previous size may time out for a while
            try:
                _, self._revision = self.backend.read_prefix(self.prefix, 10.0)
                break
            except BackendError as err:
                print(f"reading {self.prefix} (attempt {attempt + 1}): {err}", flush=True)
                time.sleep(5)
        else:
            raise BackendError("etcd did not answer the bench's read for a minute")
        self._thread = threading.Thread(target=self._follow, daemon=True)
        self._thread.start()

    def _follow(self) -> None:
        try:
            for ev in self.backend.watch(self.prefix, self._revision + 1, self.stop, prefix=True):
                group, _, leaf = ev.kv.key[len(self.prefix):].rpartition("/")
                if leaf != "leader":
                    continue
                record = None if ev.deleted else decode_leader(ev.kv.value)
                with self._lock:
                    if record is None:
                        self.leaders.pop(group, None)
                    else:
                        self.leaders[group] = record.replica_id
                        self.ever_led.add(group)
        except BackendError as err:
            print(f"group watch ended: {err}", flush=True)

    def snapshot(self) -> dict[str, str]:
        with self._lock:
            return dict(self.leaders)

    def led_once(self) -> int:
        with self._lock:
            return len(self.ever_led)

    def close(self) -> None:
        self.stop.set()
        self._thread.join(5)
        self.backend.close()


class Fleet:
    def __init__(self, cluster: EtcdCluster, work: Path, name: str, groups: int, workers: int) -> None:
        self.cluster, self.work, self.name, self.groups, self.workers = cluster, work, name, groups, workers
        self.ledger = work / "ledger.jsonl"
        self.tail = LedgerTail(self.ledger, keep=False)
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self._next = 0

    def start(self) -> str:
        replica = f"r{self._next}"
        # Each replica lists the members in its own order, so the clients spread over them.
        eps = self.cluster.endpoints[self._next % 3:] + self.cluster.endpoints[:self._next % 3]
        self._next += 1
        cmd = [sys.executable, "-m", "singleton.chaos.shardreplica", "--endpoints", ",".join(map(str, eps)),
               "--name", self.name, "--id", replica, "--prefix", PREFIX, "--groups", str(self.groups),
               "--ledger", str(self.ledger), "--hold", "0", "--no-ends", "--workers", str(self.workers),
               "--log-level", "WARNING"]
        with open(self.work / f"{replica}.log", "ab") as log:
            self.procs[replica] = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                                   stdin=subprocess.DEVNULL)
        return replica

    def usage(self) -> tuple[float, int]:
        """CPU seconds and RSS kB summed over the live replicas."""
        found = [proc_cpu_rss(p.pid) for p in self.procs.values() if p.poll() is None]
        return sum(c for c, _ in found), sum(r for _, r in found)

    def stop_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        deadline = time.monotonic() + 30
        for proc in self.procs.values():
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


def etcd_cpu(cluster: EtcdCluster) -> float:
    return sum(proc_cpu_rss(m.proc.pid)[0] for m in cluster.members if m.proc is not None)


def etcd_trouble(cluster: EtcdCluster) -> str:
    """Members that exited during the size, with the first panic line of their log."""
    dead = [m for m in cluster.members if m.proc is not None and m.proc.poll() is not None]
    out = []
    for m in dead:
        panic = next((line for line in m.log_path.read_text(errors="replace").splitlines()
                      if line.startswith("panic:")), "no panic line")
        out.append(f"{m.name} exited ({panic})")
    return "; ".join(out)


def all_handled(cluster: EtcdCluster, metric: str = "grpc_server_handled_total") -> Counter[str]:
    """Summed over the members. handled_total counts unary calls (and streams once closed); msg_received_total
    every request message, the keepalives and watch requests sent on streams included."""
    total: Counter[str] = Counter()
    for member in cluster.members:
        if member.running:  # a member that exited (see etcd_trouble) counts no more
            total += etcd_counts(member.endpoint.target, metric)
    return total


def measure(cluster: EtcdCluster, work: Path, replicas: int, groups: int, crashes: int, window_s: float,
            settle_cap_s: float, workers: int, out: dict[str, Any]) -> dict[str, Any]:
    """Fills `out` as it goes: a size that breaks half-way still has its first figures."""
    name = f"scale-{replicas}x{groups}"
    fleet = Fleet(cluster, work, name, groups, workers)
    watch = GroupWatch(cluster, name)
    try:
        started = time.monotonic()
        for _ in range(replicas):
            fleet.start()
        all_led = all_ticked = spread = None
        ticked: set[str] = set()
        cap = math.ceil(groups / replicas) + 1
        most = 0
        while time.monotonic() - started < settle_cap_s:
            now = time.monotonic()
            led = watch.snapshot()
            if all_led is None and watch.led_once() == groups:
                all_led = now - started
            ticked.update(t.job for t in fleet.tail.read_new())
            if all_ticked is None and len(ticked) == groups:
                all_ticked = now - started
            most = max(Counter(led.values()).values(), default=0)
            if all_led is not None and spread is None and most <= cap:
                spread = now - started
            if all_ticked is not None and spread is not None:
                break
            time.sleep(0.25)
        out.update(all_led=all_led, all_ticked=all_ticked, spread=spread, most=most, cap=cap,
                   settled_after=time.monotonic() - started, led=watch.led_once(), ran=len(ticked))
        print(f"{name}: all led {all_led}, all ticked {all_ticked}, spread {spread} (most {most}, cap {cap})",
              flush=True)
        # The steady window.
        time.sleep(3)
        fleet.tail.read_new()
        received = all_handled(cluster, RECEIVED)
        before, e_cpu, (r_cpu, _), busy, t0 = (all_handled(cluster), etcd_cpu(cluster), fleet.usage(),
                                               machine_busy(), time.monotonic())
        w0 = time.time()
        time.sleep(window_s)
        took = time.monotonic() - t0
        handled = all_handled(cluster) - before
        received = all_handled(cluster, RECEIVED) - received
        e_cpu = (etcd_cpu(cluster) - e_cpu) / took
        r_cpu_after, rss = fleet.usage()
        busy_after = machine_busy()
        time.sleep(1.5)  # the window's last slots have started (or been skipped) by now
        seconds = range(math.ceil(w0), math.floor(time.time() - 1.5))  # the slots due inside the window
        runs = [t for t in fleet.tail.read_new() if t.slot in seconds]
        late = [t.start_wall - t.slot for t in runs]
        rate = len(runs) / max(1, len(seconds))
        out.update(took=took, handled=handled, received=sum(received.values()) / took, etcd_cpu=e_cpu,
                   replica_cpu=(r_cpu_after - r_cpu) / took, rss=rss, runs_per_s=rate, late=late,
                   machine_busy=(busy_after[0] - busy[0]) / (busy_after[1] - busy[1]),
                   led_by=Counter(watch.snapshot().values()))
        print(f"{name}: window: {rate:.0f} runs/s, etcd {sum(handled.values()) / took:.0f} req/s, etcd CPU "
              f"{e_cpu:.2f}, replicas CPU {(r_cpu_after - r_cpu) / took:.2f}", flush=True)
        failover: list[float] = []
        orphans: list[int] = []
        unfinished = 0
        for _ in range(crashes if replicas > 1 else 0):  # nobody to take over from a lone replica
            led = watch.snapshot()
            alive = {r for r, p in fleet.procs.items() if p.poll() is None}
            counts = Counter(r for r in led.values() if r in alive)
            if not counts:
                break
            victim = counts.most_common(1)[0][0]
            mine = {g for g, r in led.items() if r == victim}
            orphans.append(len(mine))
            fleet.tail.read_new()
            sent = time.monotonic()
            fleet.procs[victim].send_signal(signal.SIGKILL)
            fleet.procs[victim].wait(10)
            first: dict[str, float] = {}
            while len(first) < len(mine) and time.monotonic() - sent < CRASH_WAIT_S:
                for t in fleet.tail.read_new():
                    if t.job in mine and t.job not in first and t.start_mono > sent and t.replica != victim:
                        first[t.job] = t.start_mono - sent
                time.sleep(0.1)
            unfinished += len(mine) - len(first)
            failover += list(first.values())
            print(f"{name}: killed {victim} leading {len(mine)} groups: taken over p50 "
                  f"{median(list(first.values())):.2f} s, max {max(first.values(), default=float('nan')):.2f} s, "
                  f"{len(mine) - len(first)} not within {CRASH_WAIT_S:g} s", flush=True)
            fleet.start()
            time.sleep(5)
        out.update(failover=failover, orphans=orphans, unfinished=unfinished)
    finally:
        fleet.stop_all()
        watch.close()
    return out


def row(m: dict[str, Any]) -> str:
    def s(v: object) -> str:
        return "—" if v is None else f"{v:.1f} s"  # type: ignore[str-format]

    led = f"{s(m.get('all_led'))} / {s(m.get('all_ticked'))}"
    if m.get("all_ticked") is None:
        led += f" ({m.get('led')} led, {m.get('ran')} run of {str(m['size']).split(' x ')[1]} in " \
               f"{m.get('settled_after', 0):.0f} s)"

    f = {k: v for k, v in m.items()}
    handled: Counter[str] = f.get("handled") or Counter()
    took = f.get("took", 1.0)
    total = sum(handled.values()) / took
    top = ", ".join(f"{k} {v / took:.0f}" for k, v in handled.most_common(4) if v)
    late, fo = f.get("late") or [], f.get("failover") or []
    groups = int(str(f["size"]).split(" x ")[1])
    spread = s(f.get("spread")) if f.get("spread") is not None else \
        f"not within {f['settled_after']:.0f} s (most {f['most']} on one, cap {f['cap']})"
    lateness = f"{median(late) * 1e3:.0f} / {pct(late, 99) * 1e3:.0f} ms" if late else "—"
    unfinished = f", {f['unfinished']} not in {CRASH_WAIT_S:g} s" if f.get("unfinished") else ""
    failover = f"{median(fo):.2f} / {pct(fo, 99):.2f} s ({len(fo)} groups, {len(f.get('orphans') or [])} kills" \
        f"{unfinished})" if fo else "—"
    return (f"| {f['size']} | {led} | {spread} | "
            f"{f.get('runs_per_s', 0):.0f} of {groups} | {lateness} | {total:.0f} ({top}); messages "
            f"{f.get('received', 0):.0f} | {f.get('etcd_cpu', 0):.2f} | {f.get('replica_cpu', 0):.2f} | "
            f"{f.get('machine_busy', 0) * 100:.0f} % | {f.get('rss', 0) / 1024:.0f} MB | {failover} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10x100,25x250,50x500", help="RxG,...: replicas x groups")
    parser.add_argument("--crashes", type=int, default=3)
    parser.add_argument("--window-s", type=float, default=20.0)
    parser.add_argument("--settle-cap-s", type=float, default=90.0, help="longest wait for the groups to spread")
    parser.add_argument("--workers", type=int, default=64, help="each replica's job pool (a replica may lead many "
                        "groups until they spread, all due at the same whole second)")
    parser.add_argument("--out", default="")
    args = parser.parse_args()

    def interrupted(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt  # so the finally blocks stop every replica and etcd member started here

    signal.signal(signal.SIGTERM, interrupted)
    sizes = [tuple(int(x) for x in s.split("x")) for s in args.sizes.split(",")]
    lines = [machine() + f" at start; sizes {args.sizes} (replicas x one-second jobs, one group each), one 3-member "
             f"etcd, everything on this machine; default timings (lease 10 s, renew every 3 s); {args.window_s:g} s "
             f"steady window; {args.crashes} kill -9 rounds per size.", "",
             "| replicas x groups | every group led / has run (from the start) | spread (≤ ceil(G/R)+1 each) | "
             "runs/s of due | start lateness p50 / p99 | etcd requests/s handled (top methods); messages "
             "received/s | etcd CPU (cores) | replicas CPU (cores) | machine busy | replicas RSS | crash failover "
             "p50 / p99 (per orphaned group) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    trouble = []
    with tempfile.TemporaryDirectory(prefix="singleton-bench-") as tmp:
        for replicas, groups in sizes:
            work = Path(tmp) / f"{replicas}x{groups}"
            work.mkdir()
            # A fresh etcd per size: one that a size broke (see below) must not break the next.
            with EtcdCluster(3, work / "etcd") as c:
                m: dict[str, Any] = {"size": f"{replicas} x {groups}"}
                try:
                    measure(c, work, replicas, groups, args.crashes, args.window_s, args.settle_cap_s, args.workers,
                            m)
                except Exception as err:  # noqa: BLE001 - a size that breaks (etcd starved, say) is a figure too
                    m["error"] = f"{type(err).__name__}: {err}"
                if etcd_trouble(c):
                    trouble.append(f"{replicas} x {groups}: etcd {etcd_trouble(c)}")
            if "error" in m:
                got = ", ".join(f"{k} {v:.1f} s" if isinstance(v, float) else f"{k} {v}" for k, v in m.items()
                                if k in ("all_led", "all_ticked", "spread", "led", "ran", "most", "runs_per_s",
                                         "replica_cpu", "etcd_cpu"))
                lines.append(f"| {m['size']} | did not finish: {m['error']} ({got or 'no figure yet'}) |")
                print(lines[-1], flush=True)
                continue
            lines.append(row(m))
            print(lines[-1], f"(load {' '.join(f'{x:.2f}' for x in os.getloadavg())})", flush=True)
            print("groups led -> replicas leading that many:",
                  sorted(Counter((m.get("led_by") or Counter()).values()).items()), flush=True)
    lines += [f"\netcd during {t}" for t in trouble]
    lines += ["", f"Load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}."]
    emit(lines, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
