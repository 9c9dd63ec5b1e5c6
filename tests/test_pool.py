"""The worker pool: threads started before the first run, a run offered while every worker is busy is refused (never
queued), a worker comes back when its run ends; and a job runner's max_instances with it."""
from __future__ import annotations

import threading

import pytest

from singleton import MemoryBackend, TickContext
from singleton.runtime.jobs import JobRunner
from singleton.runtime.pool import PoolFull, WorkerPool
from singleton.testing.recorder import wait_for


def test_workers_are_started_before_any_run_and_a_full_pool_refuses_instead_of_queueing() -> None:
    pool = WorkerPool(2).start()
    workers = [t for t in threading.enumerate() if t.name.startswith("singleton-worker")]
    assert len(pool._threads) == 2 and all(t.is_alive() and t in workers for t in pool._threads)
    assert pool.busy == 0
    release = threading.Event()
    ran: list[int] = []
    try:
        for i in range(2):
            pool.submit(lambda i=i: (ran.append(i), release.wait(10)))
        wait_for(lambda: len(ran) == 2, 5, "both runs on their workers")
        assert pool.busy == 2
        with pytest.raises(PoolFull):
            pool.submit(lambda: ran.append(99))
        release.set()
        wait_for(lambda: pool.busy == 0, 5, "the workers to come back")
        pool.submit(lambda: ran.append(3))
        wait_for(lambda: 3 in ran, 5, "a run on a freed worker")
        assert 99 not in ran  # the refused run never ran later
    finally:
        release.set()
        pool.close()


def test_a_runner_allows_max_instances_runs_at_once_and_cancels_one_by_slot() -> None:
    pool = WorkerPool(4).start()
    started: list[TickContext] = []
    runner = JobRunner(lambda ctx: (started.append(ctx), ctx.cancel_event.wait(10)), lambda c, d, e: None,
                       max_instances=2, pool=pool)

    def ctx(slot: int) -> TickContext:
        return TickContext(1, slot, float(slot), "r", threading.Event(), MemoryBackend(), "/k", job="j")

    try:
        runner.start(ctx(1))
        assert not runner.full()
        runner.start(ctx(2))
        assert runner.full() and {r.slot for r in runner.running_all()} == {1, 2}
        with pytest.raises(RuntimeError):
            runner.start(ctx(3))
        wait_for(lambda: len(started) == 2, 5, "both runs")
        runner.cancel(1)
        wait_for(lambda: [r.slot for r in runner.running_all()] == [2], 5, "run 1 to end on its cancel")
        assert started[0].cancelled and not started[1].cancelled
        runner.cancel()
        assert runner.wait_idle(5)
    finally:
        runner.cancel()
        pool.close()
