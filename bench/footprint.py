"""Footprint: CPU share, RSS and wake-ups of an idle standby and of the leader, and the etcd requests they cause.

    python bench/footprint.py [--window-s 120] [--standbys 2] [--peers singleton,etcdctl,etcd3,tooz]
                              [--out docs/bench/footprint.md]

Per peer, one holder and N standbys on a one-member etcd (nothing else uses it), left alone for a settling time,
then measured over the window: CPU (utime + stime of the holder's whole process group, from /proc) as a share of
one core, RSS at the end (summed over the group), context switches per second (every wake-up of every thread,
gRPC's own included), and etcd's own /metrics: requests handled per second by gRPC method, and streams opened.
The singleton rows name the code measured (git). Figures, never pass/fail.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import emit, etcd_counts, machine, require  # noqa: E402
from holders import PEERS, Holders  # noqa: E402

import singleton  # noqa: E402
from singleton.dev.embedded import EtcdCluster  # noqa: E402

TICK_S = os.sysconf("SC_CLK_TCK")
RECEIVED = "grpc_server_msg_received_total"  # every request message: unary calls and each one sent on a stream


def group_pids(pgid: int) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid:
                pids.append(int(entry))
    return pids


def sample(pgid: int) -> tuple[float, int, int]:
    """(CPU seconds, RSS kB, context switches) of a process group."""
    cpu, rss, switches = 0.0, 0, 0
    for pid in group_pids(pgid):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            cpu += (int(fields[11]) + int(fields[12])) / TICK_S
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    rss += int(line.split()[1])
            for task in os.listdir(f"/proc/{pid}/task"):
                for line in Path(f"/proc/{pid}/task/{task}/status").read_text().splitlines():
                    if "ctxt_switches" in line:
                        switches += int(line.split()[1])
        except OSError:
            continue
    return cpu, rss, switches


def code_under_test() -> str:
    where = Path(singleton.__file__).resolve().parent.parent
    try:
        rev = subprocess.run(["git", "-C", str(where), "describe", "--always", "--dirty"], capture_output=True,
                             text=True, timeout=10).stdout.strip()
        branch = subprocess.run(["git", "-C", str(where), "rev-parse", "--abbrev-ref", "HEAD"], capture_output=True,
                                text=True, timeout=10).stdout.strip()
    except OSError:
        return str(where)
    return f"{where} ({branch} {rev})"


def measure(h: Holders, target: str, standbys: int, settle_s: float, window_s: float) -> list[str]:
    leader = h.start()
    h.wait_ticking(60)
    waiting = [h.start() for _ in range(standbys)]
    time.sleep(settle_s)
    leader = h.ticks()[-1].replica
    waiting = [r for r in h.procs if r != leader]
    pgids = {r: h.procs[r].pid for r in h.procs}
    before = {r: sample(p) for r, p in pgids.items()}
    handled, opened, t0 = etcd_counts(target, RECEIVED), etcd_counts(target, "grpc_server_started_total"), time.monotonic()
    time.sleep(window_s)
    after = {r: sample(p) for r, p in pgids.items()}
    took = time.monotonic() - t0
    handled = etcd_counts(target, RECEIVED) - handled
    opened = etcd_counts(target, "grpc_server_started_total") - opened
    rows = []
    for role, replicas in (("leader", [leader]), ("idle standby", waiting)):
        for r in replicas:
            cpu = (after[r][0] - before[r][0]) / took * 100
            wakes = (after[r][2] - before[r][2]) / took
            rows.append((role, cpu, after[r][1] / 1024, wakes))
    n = len(pgids)
    per_s = ", ".join(f"{m} {c / took:.2f}" for m, c in sorted(handled.items()) if c)
    streams = ", ".join(f"{m} {c}" for m, c in sorted(opened.items()) if c and m.endswith(("KeepAlive", "Watch")))
    lines = []
    for role in ("leader", "idle standby"):
        mine = [row for row in rows if row[0] == role]
        cpus, rsss, wake_rates = [m[1] for m in mine], [m[2] for m in mine], [m[3] for m in mine]
        lines.append(f"| {PEERS[h.peer]} | {role} ×{len(mine)} | {min(cpus):.2f}–{max(cpus):.2f} % "
                     f"| {min(rsss):.0f}–{max(rsss):.0f} MB | {min(wake_rates):.0f}–{max(wake_rates):.0f} |"
                     + (f" {sum(handled.values()) / took / n:.2f} per replica ({per_s}); streams opened in "
                        f"{took:.0f} s: {streams or 'none'} |" if role == "leader" else " (same run) |"))
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--window-s", type=float, default=120.0)
    parser.add_argument("--settle-s", type=float, default=15.0)
    parser.add_argument("--standbys", type=int, default=2)
    parser.add_argument("--peers", default=",".join(PEERS))
    parser.add_argument("--out", default="")
    args = parser.parse_args()
    peers = args.peers.split(",")
    for bad in [p for p in peers if p not in PEERS]:
        parser.error(f"unknown peer {bad!r}")
    require(*(["etcd3"] if "etcd3" in peers else []), *(["tooz", "etcd3gw"] if "tooz" in peers else []))
    lines = [machine() + f" at start; per peer 1 holder + {args.standbys} standbys alone on a one-member etcd, "
             f"{args.settle_s:g} s settling then a {args.window_s:g} s window; singleton code: {code_under_test()}.",
             "",
             "| peer | role | CPU (share of one core) | RSS | wake-ups/s (context switches, all threads) "
             "| etcd requests/s (messages received, by method) |",
             "|---|---|---|---|---|---|"]
    with tempfile.TemporaryDirectory(prefix="singleton-bench-") as tmp, EtcdCluster(1, Path(tmp) / "etcd") as c:
        target = c.endpoints[0].target
        for peer in peers:
            work = Path(tmp) / peer
            work.mkdir()
            h = Holders(peer, target, work, f"foot-{peer}", proxied=False)
            try:
                lines += measure(h, target, args.standbys, args.settle_s, args.window_s)
            finally:
                h.stop_all()
            print(lines[-2], lines[-1], sep="\n", flush=True)
    lines.append("")
    lines.append(f"Load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}.")
    emit(lines, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
