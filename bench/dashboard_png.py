"""Renders docs/monitoring/dashboard.png: the Grafana dashboard's own queries (deploy/monitoring/dashboard.py) run
on a real Prometheus scraping real replicas, plotted with matplotlib (no Grafana runs here).

    python bench/dashboard_png.py [--out docs/monitoring/dashboard.png] [--minutes 3] [--default-timings]

An embedded etcd, three `singleton run` replicas (the ledger job, --fast timings unless --default-timings), and
Prometheus (scrape and rule evaluation every second, the shipped alert rules loaded). One third in, the leader
gets SIGTERM (a graceful handover); two thirds in, SIGKILL (a crash takeover after its lease); each is
restarted. Then every panel's queries are read back with query_range and drawn. Prints the alerts that fired.
Needs the `prometheus` binary (Debian's package, or $SINGLETON_PROMETHEUS) and matplotlib (the chaos extra).
"""
from __future__ import annotations

import argparse
import signal
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from singleton.core.timings import DEFAULT, FAST
from singleton.dev.embedded import EtcdCluster, free_port
from singleton.dev.replicas import ReplicaSet
from singleton.testing.prometheus import Prometheus

ROOT = Path(__file__).resolve().parent.parent
MONITORING = ROOT / "deploy" / "monitoring"
sys.path.insert(0, str(MONITORING))
from dashboard import PANELS, RATE, Panel  # noqa: E402 - a sibling script, not a package

REPLICAS = ("one", "two", "three")


def run_cluster(workdir: Path, seconds: float, default_timings: bool) -> tuple[Prometheus, float, float,
                                                                             list[tuple[float, str]]]:
    """Runs the cluster with its two faults; returns Prometheus (still running), start, end, and the faults."""
    timings = DEFAULT if default_timings else FAST
    etcd = EtcdCluster(1).__enter__()
    # Without fast failover, so the SIGKILL shows what a crash costs on the lease path (missed slots, the alert).
    rs = ReplicaSet(workdir, etcd.endpoints_arg, "dashboard", [*timings.cli_args(), "--no-fast-failover"])
    ports = {r: free_port() for r in REPLICAS}
    prom = Prometheus(workdir, [f"127.0.0.1:{p}" for p in ports.values()], [MONITORING / "singleton-rules.yaml"])
    faults: list[tuple[float, str]] = []

    def start(r: str) -> None:
        rs.start(r, extra_args=["--http-host", "127.0.0.1", "--http-port", str(ports[r])])

    try:
        for r in REPLICAS:
            start(r)
        prom.wait_ready()
        begin = time.time()
        for label, sig, at in (("SIGTERM", signal.SIGTERM, seconds / 3), ("SIGKILL", signal.SIGKILL, 2 * seconds / 3)):
            time.sleep(max(0.0, begin + at - time.time()))
            leader = rs.quiet_moment(timeout_s=30).replica
            rs.signal(leader, sig)
            faults.append((time.time(), f"{label} {leader}"))
            print(f"{datetime.now():%H:%M:%S} {label} to the leader {leader}", flush=True)
            rs.procs[leader].wait(30)
            time.sleep(5)
            start(leader)
        time.sleep(max(0.0, begin + seconds - time.time()))
        return prom, begin, time.time(), faults
    except BaseException:
        prom.close()
        raise
    finally:
        rs.stop_all()
        etcd.__exit__(None, None, None)


def plot(prom: Prometheus, start: float, end: float, faults: list[tuple[float, str]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots((len(PANELS) + 1) // 2, 2, figsize=(15, 3.0 * ((len(PANELS) + 1) // 2)))
    for ax, panel in zip(axes.flat, PANELS):
        draw(ax, prom, panel, start, end)
        for at, label in faults:
            ax.axvline(at - start, color="red", linestyle=":", linewidth=1)
            ax.text(at - start, 1.0, f" {label}", transform=ax.get_xaxis_transform(), fontsize=7, color="red",
                    va="top")
    for ax in list(axes.flat)[len(PANELS):]:
        ax.axis("off")
    fig.suptitle("singleton dashboard (deploy/monitoring/singleton-dashboard.json): its queries on a real Prometheus "
                 "scraping 3 real replicas, drawn with matplotlib", fontsize=11)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    print(f"wrote {out}")


def draw(ax: Any, prom: Prometheus, panel: Panel, start: float, end: float) -> None:
    ax.set_title(panel.title, fontsize=10, loc="left")
    ax.set_xlabel("s since start", fontsize=8)
    ax.tick_params(labelsize=8)
    for expr, legend in panel.targets:
        for series in prom.query_range(expr.replace(RATE, "10s"), start, end, 1.0):
            labels = series["metric"]
            name = legend.replace("{{", "{").replace("}}", "}")
            for key in ("replica_id", "reason", "job_name"):
                name = name.replace("{" + key + "}", labels.get(key, ""))
            xs, ys = gaps_broken([(float(t) - start, float(v)) for t, v in series["values"]])
            if panel.kind == "state-timeline":
                spans = [(x, 1.0) for x, y in zip(xs, ys) if y >= 1]
                ax.broken_barh(spans, (REPLICAS.index(labels.get("replica_id", "one")) - 0.3, 0.6), color="green")
            else:
                ax.plot(xs, ys, label=name.strip(), linewidth=1.2, drawstyle="steps-post")
    if panel.kind == "state-timeline":
        ax.set_yticks(range(len(REPLICAS)), REPLICAS)
        ax.set_ylim(-0.6, len(REPLICAS) - 0.4)
    elif ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, loc="upper left", ncol=3)
    ax.set_xlim(0, end - start)
    if panel.unit == "s":
        ax.set_ylabel("s", fontsize=8)


def gaps_broken(points: list[tuple[float, float]], step_s: float = 1.0) -> tuple[list[float], list[float]]:
    """x and y with a NaN wherever the series has no sample (a replica down): a line is not drawn across."""
    xs: list[float] = []
    ys: list[float] = []
    for x, y in points:
        if xs and x - xs[-1] > 1.5 * step_s:
            xs.append(xs[-1] + step_s)
            ys.append(float("nan"))
        xs.append(x)
        ys.append(y)
    return xs, ys


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "monitoring" / "dashboard.png")
    parser.add_argument("--minutes", type=float, default=3.0)
    parser.add_argument("--default-timings", action="store_true", help="10/3/2 s instead of --fast's 3/1/0.6")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="singleton-dashboard-") as tmp:
        prom, start, end, faults = run_cluster(Path(tmp), args.minutes * 60, args.default_timings)
        try:
            plot(prom, start, end, faults, args.out)
            fired = prom.api("query_range", query="ALERTS{alertstate=\"firing\"}", start=f"{start:.0f}",
                             end=f"{end:.0f}", step="1")["result"]
            for series in fired:
                m = series["metric"]
                print(f"alert fired: {m['alertname']} {m.get('reason', '')} {m.get('replica_id', '')}".rstrip())
        finally:
            prom.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
