"""One contender of bench/tick_precision.py: tick N times, then write the start times as JSON.

    python bench/tick_worker.py KIND N OUT [ENDPOINTS]

Every tick records time.time() at the job's first line and the second it was meant for. Aligned contenders
(they aim at whole seconds) are meant for the whole second; the others for their own start + i seconds.
"""
from __future__ import annotations

import asyncio
import json
import math
import sys
import threading
import time
from collections.abc import Callable

Record = Callable[[float], None]  # called with the tick's target time, at the job's first line


def naive(n: int, record: Record) -> None:
    t0 = time.time()
    for i in range(n):
        record(t0 + i)  # what it aims at: one second after the previous start
        time.sleep(1)


def timer_chain(n: int, record: Record) -> None:
    done, t0 = threading.Event(), time.time()

    def tick(i: int) -> None:
        record(t0 + i)
        if i + 1 < n:
            threading.Timer(1.0, tick, (i + 1,)).start()
        else:
            done.set()

    tick(0)
    done.wait()


def call_later(n: int, record: Record) -> None:
    async def main() -> None:
        loop, done, t0 = asyncio.get_running_loop(), asyncio.Event(), time.time()

        def tick(i: int) -> None:
            record(t0 + i)
            if i + 1 < n:
                loop.call_later(1.0, tick, i + 1)
            else:
                done.set()

        tick(0)
        await done.wait()

    asyncio.run(main())


def bare_whole_second(n: int, record: Record) -> None:
    for _ in range(n):
        time.sleep(1 - time.time() % 1)
        record(float(math.floor(time.time())))


def apscheduler(trigger_kind: str) -> Callable[[int, Record], None]:
    def run(n: int, record: Record) -> None:
        from apscheduler.schedulers.blocking import BlockingScheduler
        from apscheduler.triggers.cron import CronTrigger
        from apscheduler.triggers.interval import IntervalTrigger
        from datetime import datetime, timezone
        sched, count = BlockingScheduler(), [0]

        def job() -> None:
            record(float(math.floor(time.time())))
            count[0] += 1
            if count[0] >= n:
                threading.Thread(target=sched.shutdown, kwargs={"wait": False}).start()

        if trigger_kind == "interval":  # started on a whole second, as a user would to align it
            start = datetime.fromtimestamp(math.floor(time.time()) + 1, timezone.utc)
            trigger: object = IntervalTrigger(seconds=1, start_date=start)
        else:
            trigger = CronTrigger(second="*")
        sched.add_job(job, trigger, max_instances=1, misfire_grace_time=None)
        sched.start()

    return run


def singleton_leader(endpoints: str) -> Callable[[int, Record], None]:
    def run(n: int, record: Record) -> None:
        import os
        from singleton import Config, Singleton, TickContext
        from singleton.core.config import parse_endpoint
        count, done = [0], threading.Event()

        def job(ctx: TickContext) -> None:
            record(float(ctx.slot))
            count[0] += 1
            if count[0] >= n:
                done.set()

        config = Config(endpoints=tuple(parse_endpoint(e) for e in endpoints.split(",")),
                        name=f"tick-bench-{os.getpid()}", replica_id="bench")
        with Singleton(config, job):
            done.wait(n + 60)

    return run


def main() -> None:
    kind, n, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    kinds: dict[str, Callable[[int, Record], None]] = {
        "naive": naive, "timer": timer_chain, "call_later": call_later, "bare": bare_whole_second,
        "aps_interval": apscheduler("interval"), "aps_cron": apscheduler("cron"),
    }
    if kind == "singleton":
        kinds[kind] = singleton_leader(sys.argv[4])
    starts: list[tuple[float, float]] = []
    kinds[kind](n, lambda target: starts.append((time.time(), target)))  # time.time() first: the first line
    with open(out, "w", encoding="utf-8") as f:
        json.dump(starts, f)


if __name__ == "__main__":
    main()
