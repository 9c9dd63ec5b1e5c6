"""The same with APScheduler's AsyncIOScheduler inside an asyncio program, driven by `elector.changes()`.

    python gated_asyncio.py --endpoints http://127.0.0.1:2379 --name reports
"""
from __future__ import annotations

import argparse
import asyncio
import logging

from apscheduler.schedulers.asyncio import AsyncIOScheduler

from singleton import Config
from singleton.runtime.elector import Elector

log = logging.getLogger("gated")


async def follow_leadership(elector: Elector, scheduler: AsyncIOScheduler) -> None:
    """Resume the scheduler while this replica leads, pause it otherwise; returns when the task is cancelled."""
    async for change in elector.changes():
        if change.leader:
            log.info("leading (token %s): scheduler resumed", change.fencing_token)
            scheduler.resume()
        else:
            log.info("not leading (%s): scheduler paused", change.reason.value if change.reason else "standby")
            scheduler.pause()


async def amain(endpoints: str, name: str) -> None:
    elector = Elector(Config(endpoints=endpoints, name=name))

    @elector.guard
    async def refresh() -> None:
        log.info("refresh token=%s", elector.fencing_token)

    scheduler = AsyncIOScheduler(timezone="UTC")
    scheduler.add_job(refresh, "cron", second="*/10", id="refresh")  # APScheduler's own cron, with seconds
    scheduler.start(paused=True)
    async with elector:  # SIGTERM/SIGINT: hands over gracefully and ends the block
        follower = asyncio.create_task(follow_leadership(elector, scheduler))
        try:
            await asyncio.Event().wait()
        finally:
            scheduler.pause()
            follower.cancel()
    scheduler.shutdown(wait=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--endpoints", default="http://127.0.0.1:2379")
    parser.add_argument("--name", default="apscheduler-gated")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(amain(args.endpoints, args.name))


if __name__ == "__main__":
    main()
