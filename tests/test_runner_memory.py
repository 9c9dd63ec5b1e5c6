"""The Singleton on the in-memory backend: job kinds, failures, callbacks, context managers, CPU-heavy jobs."""
from __future__ import annotations

import asyncio
import logging
import threading
import time

import pytest

from singleton import Config, MemoryBackend, Singleton, StepDownReason, TickContext
from singleton.core.timings import FAST
from singleton.testing.recorder import wait_for


def config(replica: str, **extra: float) -> Config:
    return Config(endpoints="127.0.0.1:2379", name="mem", replica_id=replica,  # type: ignore[arg-type]
                  **{**FAST.config_kwargs(), **extra})


def test_decorated_job_runs_and_listeners_hear_election_and_step_down() -> None:
    backend = MemoryBackend()
    app = Singleton(config("a"), backend=backend)
    seen: list[object] = []
    contexts: list[TickContext] = []

    @app.job
    def job(ctx: TickContext) -> None:
        contexts.append(ctx)

    app.on_elected(lambda token: seen.append(("elected", token)))
    app.on_stepped_down(lambda reason: seen.append(("stepped_down", reason)))
    with app:
        wait_for(lambda: len(contexts) >= 2, 5, "ticks")
    ctx = contexts[0]
    assert ctx.replica_id == "a" and ctx.scheduled_at == float(ctx.slot) and 0 <= ctx.lateness_s < 0.5
    assert seen == [("elected", ctx.fencing_token), ("stepped_down", StepDownReason.SHUTDOWN)]
    assert backend.live_lease_ids() == []  # the lease was revoked on stop


def test_a_job_that_raises_is_logged_and_counted_and_ticking_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="singleton")
    calls: list[int] = []

    def flaky(ctx: TickContext) -> None:
        calls.append(ctx.slot)
        raise ValueError("boom")

    with Singleton(config("a"), flaky, backend=MemoryBackend()) as app:
        wait_for(lambda: len(calls) >= 3, 6, "ticks despite failures")
    assert app.stats.ticks["failed"] >= 2
    failures = [r for r in caplog.records if "job failed" in r.getMessage()]
    assert failures and failures[0].exc_info and "boom" in str(failures[0].exc_info[1])


def test_async_job_under_async_with_is_cancelled_on_stop() -> None:
    started: list[int] = []
    cancelled = threading.Event()

    async def job(ctx: TickContext) -> None:
        started.append(ctx.slot)
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    async def main() -> Singleton:
        async with Singleton(config("a", stop_timeout_s=0.5), job, backend=MemoryBackend()) as app:
            while not started:
                await asyncio.sleep(0.02)
        return app

    app = asyncio.run(main())
    assert started and cancelled.wait(2), "the running coroutine was not cancelled"
    assert app.stats.ticks["failed"] == 0  # a cancelled tick is not a failure


def test_a_cpu_heavy_job_never_delays_renewals() -> None:
    def burn(ctx: TickContext) -> None:
        end = time.monotonic() + 2.5  # pure-Python busy loop, longer than two keepalive intervals
        n = 0
        while time.monotonic() < end:
            n += 1

    app = Singleton(config("a"), burn, backend=MemoryBackend())
    with app:
        wait_for(lambda: app.is_leader, 5, "leadership")
        time.sleep(5.5)
        assert app.is_leader
    assert not [r for r in app.stats.step_downs if r != "shutdown"]
    assert app.stats.renewals_failed == 0 and app.stats.ticks["skipped"] >= 2


def test_a_hung_backend_makes_the_leader_step_down_and_a_healed_one_lets_it_lead_again() -> None:
    backend = MemoryBackend()
    app = Singleton(config("a"), lambda ctx: None, backend=backend)
    reasons: list[StepDownReason] = []
    app.on_stepped_down(reasons.append)
    with app:
        wait_for(lambda: app.is_leader, 5, "leadership")
        backend.hang()
        wait_for(lambda: reasons, 5, "step-down")
        assert reasons[0] in (StepDownReason.RENEWALS_FAILED, StepDownReason.LEASE_EXPIRING)
        backend.heal()
        wait_for(lambda: app.is_leader, 10, "leading again after healing")
