"""APScheduler 3.x gated by singleton's leadership: every replica runs the same scheduler, and only the leader's
is running; the others' are paused. A standby's scheduler resumes the moment it is elected.

    python gated_scheduler.py --endpoints http://127.0.0.1:2379 --name reports   # on every replica

Jobs are wrapped in `elector.guard` too: a scheduler may fire in the instant between a step-down and its pause,
and the guard checks the lease again right before the body. Writes go through `elector.guarded_put`, which etcd
refuses once the term is over (a replica frozen past its lease cannot overwrite its successor's work).
"""
from __future__ import annotations

import argparse
import logging
import signal
import threading
from collections.abc import Callable
from typing import Any

from apscheduler.schedulers.background import BackgroundScheduler

from singleton import Config, StepDownReason
from singleton.runtime.elector import Elector

log = logging.getLogger("gated")


def gated_scheduler(elector: Elector, jobs: list[tuple[Callable[[], Any], dict[str, Any]]]) -> BackgroundScheduler:
    """A BackgroundScheduler with `jobs` ((function, add_job keyword arguments)), started paused, resumed while
    `elector` leads. Call this before starting the elector, so that no election goes unheard."""
    scheduler = BackgroundScheduler(timezone="UTC")
    for fn, trigger in jobs:
        scheduler.add_job(elector.guard(fn), **trigger)
    scheduler.start(paused=True)

    def elected(token: int) -> None:
        log.info("elected (token %d): resuming the scheduler", token)
        scheduler.resume()

    def stepped_down(reason: StepDownReason) -> None:
        log.info("stepped down (%s): pausing the scheduler", reason.value)
        scheduler.pause()

    elector.on_elected(elected)
    elector.on_stepped_down(stepped_down)
    return scheduler


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--endpoints", default="http://127.0.0.1:2379")
    parser.add_argument("--name", default="apscheduler-gated")
    parser.add_argument("--id", default=None, help="replica id (default: host-pid-random)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    extra = {"replica_id": args.id} if args.id else {}
    elector = Elector(Config(endpoints=args.endpoints, name=args.name, **extra))

    def report() -> None:
        token = elector.check()  # NotLeader if the term ended since the guard looked
        written = elector.guarded_put(f"/{args.name}/last-report", f"by {elector.singleton.replica_id}", token)
        log.info("report token=%d %s", token, "written" if written else "refused: term over")

    def nightly() -> None:
        log.info("nightly cleanup token=%s", elector.fencing_token)

    scheduler = gated_scheduler(elector, [
        (report, {"trigger": "interval", "seconds": 5, "id": "report"}),
        (nightly, {"trigger": "cron", "hour": 2, "minute": 30, "timezone": "Europe/Berlin", "id": "nightly"}),
    ])
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    with elector:  # campaigns in the background; leaves gracefully (handover) at the end of the block
        stop.wait()
        scheduler.pause()  # no new runs while we hand over
    scheduler.shutdown(wait=True)


if __name__ == "__main__":
    main()
