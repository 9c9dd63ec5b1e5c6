"""Crash failover with a 10 s lease, singleton (fast failover on) beside two peers, all in one run on one etcd.

    python bench/fast_failover.py [--rounds 20] [--peer-rounds 20] [--out docs/bench/fast-failover.md]

- singleton: 3 `singleton run` replicas at the default timings (10/3/2). Each round kills the leader at a random
  moment of its second, in turn by SIGKILL of its pid, SIGKILL of its whole process group, and a crash inside a
  running job (the job SIGKILLs its own process); then starts a replacement. Figure: the kill -> the new leader's
  first tick (it runs on whole seconds, so that includes the wait for the next one).
- etcdctl lock --ttl 10: 3 `etcdctl lock` holders-in-waiting; SIGKILL the one holding -> another prints that it
  holds the lock.
- python3-etcd3 Lock(ttl=10): 3 processes, the holder refreshing every 3 s; SIGKILL it -> another acquired.

Figures only, never pass/fail; every kill's time is taken on this process's monotonic clock.
"""
from __future__ import annotations

import argparse
import os
import platform
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from singleton.core.timings import DEFAULT
from singleton.dev.embedded import EtcdCluster, etcd_binary
from singleton.dev.ledger import CRASH_FILE_ENV, safety_violations
from singleton.dev.replicas import ReplicaSet

ETCD3_HOLDER = """
import sys, time, etcd3
host, port, name = sys.argv[1], int(sys.argv[2]), sys.argv[3]
client = etcd3.client(host=host, port=port)
lock = client.lock(name, ttl=10)
lock.acquire(timeout=None)
print("acquired", flush=True)
while True:
    time.sleep(3)
    lock.refresh()
"""


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def figures(values: list[float]) -> str:
    if not values:
        return "| - | - | - | - |"
    return f"| {len(values)} | {pct(values, 50):.2f} s | {pct(values, 99):.2f} s | {max(values):.2f} s |"


def singleton_rounds(cluster: EtcdCluster, work: Path, rounds: int) -> tuple[list[float], dict[str, list[float]]]:
    crash_file = work / "crash"
    rs = ReplicaSet(work, cluster.endpoints_arg, "bench-ff", DEFAULT.cli_args(), hold_s=0.3)
    env = {CRASH_FILE_ENV: str(crash_file)}
    times: list[float] = []
    by_mode: dict[str, list[float]] = {"sigkill": [], "killpg": [], "crash-in-job": []}
    n = 0
    try:
        for _ in range(3):
            rs.start(f"r{n}", env=env, new_session=True)
            n += 1
        rs.wait_ticks(2, 30)
        time.sleep(3)  # every standby connected to the leader's sensing listener
        for i in range(rounds):
            mode = list(by_mode)[i % 3]
            if mode == "crash-in-job":
                leader = rs.quiet_moment(timeout_s=30).replica
                crash_file.touch()
                rs.procs[leader].wait(10)
                killed = max(t.start_mono for t in rs.ticks() if t.replica == leader) + 0.3 / 2
            else:
                phase = random.uniform(0.35, 0.95)  # after the 0.3 s job, anywhere in the second
                leader = rs.quiet_moment(timeout_s=30, window=(phase, min(0.99, phase + 0.04))).replica
                if mode == "sigkill":
                    rs.signal(leader, signal.SIGKILL)
                else:
                    os.killpg(rs.procs[leader].pid, signal.SIGKILL)
                killed = time.monotonic()
            new = rs.first_tick_after(killed, DEFAULT.lease_ttl_s + 5, exclude=leader)
            if new is None:
                raise SystemExit(f"no takeover; logs in {work}")
            took = new.start_mono - killed
            times.append(took)
            by_mode[mode].append(took)
            print(f"singleton {i + 1}/{rounds} {mode}: {leader} -> {new.replica} in {took:.3f} s", flush=True)
            rs.procs[leader].wait(10)
            rs.start(f"r{n}", env=env, new_session=True)  # keep 3 replicas
            n += 1
            time.sleep(2.5)  # the replacement stands by and senses the leader
    finally:
        rs.stop_all()
    problems = safety_violations(rs.ticks())
    print(f"singleton invariants: {'held' if not problems else problems}", flush=True)
    return times, by_mode


class Holders:
    """Processes that each print one line when they hold the lock; the time each line arrived."""

    def __init__(self, cmd: list[str], marker: str) -> None:
        self.cmd, self.marker = cmd, marker
        self.procs: list[subprocess.Popen[str]] = []
        self.acquired: dict[int, float] = {}
        self._changed = threading.Condition()

    def start(self) -> None:
        proc = subprocess.Popen(self.cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                                start_new_session=True)
        self.procs.append(proc)
        threading.Thread(target=self._read, args=(proc,), daemon=True).start()

    def _read(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            if self.marker in line:
                with self._changed:
                    self.acquired.setdefault(proc.pid, time.monotonic())
                    self._changed.notify_all()
                return

    def holder(self, after: float, timeout_s: float) -> tuple[int, float] | None:
        deadline = time.monotonic() + timeout_s
        with self._changed:
            while True:
                alive = {p.pid for p in self.procs if p.poll() is None}
                found = [(pid, at) for pid, at in self.acquired.items() if at > after and pid in alive]
                if found:
                    return found[0]
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._changed.wait(min(left, 0.5))

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(5)


def peer_rounds(label: str, holders: Holders, rounds: int) -> list[float]:
    times: list[float] = []
    try:
        for _ in range(3):
            holders.start()
        first = holders.holder(0.0, 30)
        if first is None:
            raise SystemExit(f"{label}: nobody took the lock")
        pid = first[0]
        time.sleep(1)
        for i in range(rounds):
            time.sleep(random.uniform(0.0, 1.0))
            proc = next(p for p in holders.procs if p.pid == pid)
            proc.kill()
            killed = time.monotonic()
            new = holders.holder(killed, 30)
            if new is None:
                raise SystemExit(f"{label}: no new holder within 30 s")
            times.append(new[1] - killed)
            print(f"{label} {i + 1}/{rounds}: {new[1] - killed:.3f} s", flush=True)
            proc.wait(5)
            pid = new[0]
            holders.start()
            time.sleep(1)  # the replacement waits on the lock
    finally:
        holders.stop()
    return times


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--peer-rounds", type=int, default=20)
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="singleton-ff-bench-"))
    load = os.getloadavg()
    with EtcdCluster(1, work / "etcd") as cluster:
        ours, by_mode = singleton_rounds(cluster, work, args.rounds)
        endpoint = cluster.endpoints[0]
        etcdctl = Holders([etcd_binary("etcdctl"), f"--endpoints={cluster.endpoints_arg}", "lock", "--ttl", "10",
                           "bench-etcdctl"], "bench-etcdctl")
        theirs = peer_rounds("etcdctl lock --ttl 10", etcdctl, args.peer_rounds)
        etcd3 = Holders([sys.executable, "-c", ETCD3_HOLDER, endpoint.host, str(endpoint.port), "bench-etcd3"],
                        "acquired")
        py = peer_rounds("python3-etcd3 Lock(ttl=10)", etcd3, args.peer_rounds)
    lines = [
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, load average {load[0]:.2f} {load[1]:.2f} "
        f"{load[2]:.2f} at start (shared with other work); Python {platform.python_version()}; one-member etcd on "
        f"loopback; 3 contenders each; SIGKILL of the holder at a random moment.",
        "",
        "| who (10 s lease) | rounds | p50 | p99 | max |",
        "|---|---|---|---|---|",
        f"| singleton, fast failover (kill -> new leader's first tick) {figures(ours)}",
        *(f"| — of which {mode} {figures(values)}" for mode, values in by_mode.items()),
        f"| etcdctl lock --ttl 10 (kill -> next holder) {figures(theirs)}",
        f"| python3-etcd3 Lock(ttl=10) (kill -> next holder) {figures(py)}",
    ]
    text = "\n".join(lines) + "\n"
    print("\n" + text)
    if args.out:
        Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
