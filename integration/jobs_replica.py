"""A replica with 20 jobs for integration/test_jobs_processes.py: `python integration/jobs_replica.py ENDPOINTS
NAME ID LEDGER_DIR`. Every run appends one JSON line to LEDGER_DIR/<job>.jsonl (replica, pid, token, slot, start and
end on the machine's monotonic clock), the independent evidence the test judges by. SIGTERM stops it gracefully."""
from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

from singleton import Config, Singleton, TickContext
from singleton.core.jobspec import build_job_spec
from singleton.core.timings import FAST

# name -> (schedule and policies, how long a run holds)
JOBS: dict[str, tuple[dict[str, Any], float]] = {
    "q1": ({"every": 0.25}, 0.02), "q2": ({"every": 0.25}, 0.02), "q3": ({"every": 0.25}, 0.02),
    "h1": ({"every": 0.5}, 0.02), "h2": ({"every": 0.5}, 0.02),
    "s1": ({"every": 1}, 0.02), "s2": ({"every": 1}, 0.02), "s3": ({"every": 1}, 0.02),
    "s4": ({"every": 1, "jitter": 0.3}, 0.02),
    "t1": ({"every": 2}, 0.02), "t2": ({"every": 2}, 0.02), "t3": ({"every": 2}, 0.02),
    "seven": ({"every": 7}, 0.02),
    "c2": ({"cron": "*/2 * * * * *"}, 0.02), "c3": ({"cron": "*/3 * * * * *", "tz": "Europe/Berlin"}, 0.02),
    "c5": ({"cron": "*/5 * * * * *", "tz": "America/New_York"}, 0.02),
    "slow": ({"every": 1}, 1.5),  # overlaps its next slot: skipped and counted
    "allow": ({"every": 1, "overlap": "allow", "max_instances": 2}, 1.3),  # two at once, never three
    "raising": ({"every": 1}, 0.0),  # raises every time
    "hung": ({"every": 2, "timeout": 0.5}, 30.0),  # runs until its timeout cancels it
}


def make_job(name: str, hold_s: float, ledger: Path) -> Any:
    lock = threading.Lock()

    def run(ctx: TickContext) -> None:
        start = time.monotonic()
        try:
            if name == "raising":
                raise RuntimeError("this job always fails")
            ctx.cancel_event.wait(hold_s)
        finally:
            line = json.dumps({"job": name, "replica": ctx.replica_id, "pid": os.getpid(), "token": ctx.fencing_token,
                               "slot": ctx.slot, "start_mono": start, "end_mono": time.monotonic()})
            with lock, open(ledger, "a") as out:
                out.write(line + "\n")
    return run


def main(endpoints: str, name: str, replica: str, ledger_dir: str) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    app = Singleton(Config(endpoints=endpoints, name=name, replica_id=replica, history_size=1000, workers=24,
                           stop_timeout_s=2.0, **FAST.config_kwargs()))
    for job, (options, hold_s) in JOBS.items():
        app.add_job(build_job_spec(job, **options), make_job(job, hold_s, Path(ledger_dir) / f"{job}.jsonl"))
    app.run()


if __name__ == "__main__":
    main(*sys.argv[1:5])
