"""`singleton chaos`: run the scenarios, print a progress line each, write report.md and timeline.png."""
from __future__ import annotations

import logging
import signal
import time
from pathlib import Path

from singleton.core.config import parse_endpoints
from singleton.core.errors import ConfigError
from singleton.chaos.harness import Harness
from singleton.core.timings import DEFAULT, FAST
from singleton.chaos.report import write_report, write_timeline
from singleton.chaos.scenarios import run_all, select


def run_chaos(*, endpoints: str, replicas: int, scenarios: str, rounds: int, out: str, fast: bool,
              members: int, broken: bool = False) -> int:
    try:
        names = select(scenarios)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    if replicas < 2 or rounds < 1 or members not in (1, 3, 5):
        raise ConfigError("--replicas must be >= 2, --rounds >= 1, --members 1, 3 or 5")
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    timings = FAST if fast else DEFAULT
    harness = Harness(out_dir, endpoints=list(parse_endpoints(endpoints)) if endpoints else None, members=members,
                      replicas=replicas, timings=timings)
    cluster = endpoints or f"embedded, {members} member(s)"
    print(f"singleton chaos: {len(names)} scenario(s) x {rounds} round(s) on {cluster}, {replicas} replicas, "
          f"timings: {timings}",
          flush=True)
    # The harness's own etcd clients (its key watcher) would log member losses it injected itself.
    logging.getLogger("singleton").setLevel(logging.ERROR)
    started = time.monotonic()

    def interrupted(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt  # so the finally below stops every process and etcd member we started

    signal.signal(signal.SIGTERM, interrupted)
    harness.start()
    try:
        results = run_all(harness, names, rounds, lambda line: print(line, flush=True), broken=broken)
    finally:
        harness.close()
    report = write_report(out_dir, results, timings, cluster, time.monotonic() - started)  # type: ignore[arg-type]
    timeline = write_timeline(out_dir, results)  # type: ignore[arg-type]
    held = all(v.held for v, _ in results)
    print(f"{'every invariant held' if held else 'INVARIANTS VIOLATED'}; report: {report}; timeline: {timeline}")
    return 0 if held else 1
