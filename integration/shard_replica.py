"""A sharded replica for integration/test_shard_processes.py: `python integration/shard_replica.py ENDPOINTS NAME ID
LEDGER`. 50 every-second jobs, each its own group; every run appends one JSON line (job, slot, replica, pid, token,
start and end on the machine's monotonic clock, start on the wall clock) to LEDGER with one O_APPEND write, so the
lines of five processes never interleave. SIGTERM stops it gracefully (every group handed over).
A worker per job: the first member up leads every group until the others join, their jobs all start at the same
instant, and a slot due while every worker is busy is skipped."""
from __future__ import annotations

import json
import logging
import os
import sys
import time
from typing import Any

from singleton import Config, Singleton, TickContext

JOBS = [f"j{i:02d}" for i in range(50)]
# A 4 s lease renewed every second, stepping down below 1.5 s left: a crash is taken over within about 5 s.
TIMINGS: dict[str, Any] = {"lease_ttl_s": 4.0, "keepalive_interval_s": 1.0, "min_remaining_ttl_s": 1.5,
                           "shard_campaign_delay_s": 0.5, "rebalance_interval_s": 0.5}


def make_job(name: str, ledger: str) -> Any:
    def run(ctx: TickContext) -> None:
        start, wall = time.monotonic(), time.time()
        ctx.cancel_event.wait(0.02)
        line = json.dumps({"job": name, "slot": ctx.slot, "replica": ctx.replica_id, "pid": os.getpid(),
                           "token": ctx.fencing_token, "start_mono": start, "start_wall": wall,
                           "end_mono": time.monotonic()}) + "\n"
        fd = os.open(ledger, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)
    return run


def main(endpoints: str, name: str, replica: str, ledger: str) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    app = Singleton(Config(endpoints=endpoints, name=name, replica_id=replica, shard=True, stop_timeout_s=2.0,
                           workers=len(JOBS), **TIMINGS))
    for job in JOBS:
        app.job(name=job, every=1)(make_job(job, ledger))
    app.run()


if __name__ == "__main__":
    main(*sys.argv[1:5])
