"""Regression tests for failure modes outside the chaos suite: hung and exiting jobs, slow and async callbacks,
a failing tick loop, asyncio embedding, signals. The in-memory backend has etcd's semantics; no sleeps decide."""
from __future__ import annotations

import asyncio
import logging
import signal
import threading
import time
from typing import Any

import pytest

from singleton import Config, MemoryBackend, Role, Singleton, StepDownReason, TickContext
from singleton.core.errors import ConfigError
from singleton.runtime.jobs import JobRunner
from singleton.core.timings import FAST
from singleton.testing.recorder import Recorder, wait_for


def config(replica: str, **extra: Any) -> Config:
    return Config(endpoints="127.0.0.1:2379", name="hard", replica_id=replica, **{**FAST.config_kwargs(), **extra})


def leader_key_holder(backend: MemoryBackend, app: Singleton) -> int | None:
    kv, _ = backend.get(app.config.leader_key, 1.0)
    return None if kv is None else kv.lease_id


def test_a_hung_job_is_cancelled_then_its_replica_steps_down_holding_its_lease_and_fails_health(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="singleton")
    backend = MemoryBackend()
    release = threading.Event()
    contexts: list[TickContext] = []

    def job(ctx: TickContext) -> None:
        contexts.append(ctx)
        if len(contexts) == 1:
            release.wait(30)  # never returns on its own, and ignores its cancel event

    app = Singleton(config("a", job_timeout_s=0.5, job_cancel_grace_s=0.5), job, backend=backend)
    reasons: list[StepDownReason] = []
    app.on_stepped_down(reasons.append)
    try:
        with app:
            wait_for(lambda: reasons, 10, "a step-down")
            assert reasons == [StepDownReason.JOB_HUNG]
            assert contexts[0].cancel_event.is_set()  # it was told first, at its timeout
            assert app.stats.ticks["timed_out"] == 1
            # Nothing released: the key still stands on the lease, which runs out by itself.
            assert leader_key_holder(backend, app) is not None
            problems = app.health()
            assert problems and "still runs" in problems[0] and "hung" in problems[0]
            overdue = app.gauge_values()["job_overdue"]  # singleton_job_overdue_seconds: SingletonJobStuck's
            assert overdue >= 0.5  # the grace had passed at the step-down
            wait_for(lambda: leader_key_holder(backend, app) is None, 5, "the lease to run out")
            # A vacant key, and still it does not stand beside its running job.
            assert app.stats.elections_won == 1 and app.role is Role.FOLLOWER
            assert "not standing for election while the tick of slot" in caplog.text
            release.set()
            wait_for(lambda: app.is_leader, 10, "leading again once the job ended")
            assert app.health() == []
            assert app.gauge_values()["job_overdue"] == 0.0
    finally:
        release.set()


@pytest.mark.parametrize("exc", [SystemExit(3), KeyboardInterrupt(), GeneratorExit()])
def test_an_async_job_raising_a_base_exception_does_not_kill_the_loop_or_wedge_busy(exc: BaseException) -> None:
    calls: list[int] = []

    async def job(ctx: TickContext) -> None:
        calls.append(ctx.slot)
        if len(calls) == 1:
            raise exc

    with Singleton(config("a"), job, backend=MemoryBackend()) as app:
        wait_for(lambda: len(calls) >= 3, 8, "ticks after the job raised")
    assert app.stats.ticks["failed"] == 1


def test_a_forced_step_down_cancels_the_job_before_a_slow_callback_runs_and_does_not_wait_for_it() -> None:
    backend = MemoryBackend()
    contexts: list[TickContext] = []
    cancel_was_set_when_callback_started: list[bool] = []
    callback_release = threading.Event()

    def job(ctx: TickContext) -> None:
        contexts.append(ctx)
        ctx.cancel_event.wait(10)

    def slow_callback(reason: StepDownReason) -> None:
        if reason is StepDownReason.LEASE_LOST:
            cancel_was_set_when_callback_started.append(contexts[-1].cancel_event.is_set())
            callback_release.wait(30)

    app = Singleton(config("a"), job, backend=backend)
    app.on_stepped_down(slow_callback)
    try:
        with app:
            wait_for(lambda: contexts and app.is_leader, 5, "a running tick")
            term = app.election.term
            assert term is not None
            backend.revoke_lease(term.keeper.lease_id, 1.0)  # gone behind its back: LEASE_LOST at the next renewal
            wait_for(lambda: cancel_was_set_when_callback_started, 5, "the callback")
            assert cancel_was_set_when_callback_started == [True]  # the job was told first
            # The next campaign does not wait for the callback, which is still blocked.
            wait_for(lambda: app.is_leader and app.stats.elections_won == 2, 10, "leading again")
            assert not callback_release.is_set()
    finally:
        callback_release.set()


def test_an_error_in_the_tick_loop_steps_down_cleanly_and_says_why(monkeypatch: pytest.MonkeyPatch,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="singleton")
    backend = MemoryBackend()
    original, original_arm = JobRunner.start, JobRunner.arm
    attempts = [0]

    def start(self: JobRunner, ctx: TickContext) -> None:
        attempts[0] += 1
        if attempts[0] == 1:
            raise RuntimeError("can't start new thread")
        original(self, ctx)

    def arm(self: JobRunner, ctx: TickContext, armed: Any) -> bool:  # a sync run is handed over at its claim
        attempts[0] += 1
        if attempts[0] == 1:
            raise RuntimeError("can't start new thread")
        return original_arm(self, ctx, armed)

    monkeypatch.setattr(JobRunner, "start", start)
    monkeypatch.setattr(JobRunner, "arm", arm)
    app = Singleton(config("a"), lambda ctx: None, backend=backend)
    reasons: list[StepDownReason] = []
    app.on_stepped_down(reasons.append)
    with app:
        wait_for(lambda: app.stats.ticks["run"] >= 1, 10, "a tick after the failure")
    assert reasons[0] is StepDownReason.TICKER_FAILED
    assert "can't start new thread" in caplog.text
    assert app.role is Role.STOPPED and backend.live_lease_ids() == []


def test_cancelling_run_async_stops_gracefully_and_async_jobs_run_on_the_callers_loop() -> None:
    backend = MemoryBackend()

    async def main() -> tuple[Singleton, list[bool]]:
        loop = asyncio.get_running_loop()
        lock = asyncio.Lock()  # made on the caller's loop, as an app's clients and locks are
        on_callers_loop: list[bool] = []

        async def job(ctx: TickContext) -> None:
            async with lock:
                on_callers_loop.append(asyncio.get_running_loop() is loop)

        app = Singleton(config("a"), job, backend=backend)
        task = asyncio.create_task(app.run_async())
        for _ in range(500):
            if len(on_callers_loop) >= 2:
                break
            await asyncio.sleep(0.02)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return app, on_callers_loop

    app, on_callers_loop = asyncio.run(asyncio.wait_for(main(), 30))
    assert len(on_callers_loop) >= 2 and all(on_callers_loop)
    assert app.role is Role.STOPPED and backend.live_lease_ids() == []  # it stopped, and released the lease


def test_the_resign_watch_outlives_a_compaction() -> None:
    backend = MemoryBackend()
    app = Singleton(config("a"), lambda ctx: None, backend=backend)
    reasons: list[StepDownReason] = []
    app.on_stepped_down(reasons.append)
    with app:
        wait_for(lambda: app.is_leader, 5, "leadership")
        token = app.fencing_token
        assert token is not None
        for i in range(3):  # history the watch has not read yet...
            assert backend.guarded_put(app.config.leader_key, token, f"/elsewhere/{i}", b"x", 1.0)
        _, now = backend.get(app.config.leader_key, 1.0)
        backend.compact(now)  # ...is compacted away: the resign watch's next revision is gone
        assert backend.guarded_put(app.config.leader_key, token, app.config.resign_key, str(token).encode(), 1.0)
        wait_for(lambda: StepDownReason.RESIGNED in reasons, 5, "the resign to arrive after the compaction")


def test_registering_a_second_job_raises() -> None:
    app = Singleton(config("a"), backend=MemoryBackend())
    app.job(lambda ctx: None)
    with pytest.raises(ConfigError, match="already registered"):
        app.job(lambda ctx: None)
    with pytest.raises(ConfigError):
        Singleton(config("b"), lambda ctx: None, backend=MemoryBackend()).job(lambda ctx: None)


def test_a_slow_on_elected_neither_delays_the_keepalive_nor_makes_leadership_flap() -> None:
    backend = MemoryBackend()
    rec = Recorder()
    gate = threading.Event()
    a = Singleton(config("a"), rec, backend=backend)
    b = Singleton(config("b"), rec, backend=backend)
    for app in (a, b):
        app.on_elected(lambda token: gate.wait(30))  # far longer than the 3 s lease
    try:
        with a, b:
            wait_for(lambda: len(rec.runs) >= 4, 10, "ticks while on_elected is still running")
            assert a.stats.elections_won + b.stats.elections_won == 1
            gate.set()  # let the callbacks end, so that stopping does not wait for them
    finally:
        gate.set()
    rec.assert_safe()


def test_async_callbacks_are_awaited() -> None:
    heard: list[object] = []
    done = threading.Event()

    async def elected(token: int) -> None:
        await asyncio.sleep(0)
        heard.append(("elected", token))

    async def stepped_down(reason: StepDownReason) -> None:
        await asyncio.sleep(0)
        heard.append(("stepped_down", reason))
        done.set()

    app = Singleton(config("a"), lambda ctx: None, backend=MemoryBackend())
    app.on_elected(elected)
    app.on_stepped_down(stepped_down)
    with app:
        wait_for(lambda: heard, 5, "the async on_elected")
    assert done.wait(5)
    assert heard == [("elected", heard[0][1]), ("stepped_down", StepDownReason.SHUTDOWN)]


def test_run_restores_the_signal_handlers_it_replaced() -> None:
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    app = Singleton(config("a"), lambda ctx: None, backend=MemoryBackend())
    app.on_elected(lambda token: app.stop())
    app.run()  # in the main thread: installs its handlers, and must put the old ones back
    assert {sig: signal.getsignal(sig) for sig in before} == before


def test_a_graceful_stop_whose_job_ignores_cancel_is_one_bounded_wait_and_releases_nothing() -> None:
    backend = MemoryBackend()
    release = threading.Event()
    running = threading.Event()

    def job(ctx: TickContext) -> None:
        running.set()
        release.wait(30)

    app = Singleton(config("a", stop_timeout_s=1.0, job_cancel_grace_s=0.5), job, backend=backend)
    try:
        app.start()
        wait_for(running.is_set, 5, "a running tick")
        started = time.monotonic()
        app.stop()
        took = time.monotonic() - started
        # stop timeout + cancel grace, once (it used to wait the stop timeout again after the handover)
        assert 1.4 <= took < 2.5, took
        assert backend.live_lease_ids() and leader_key_holder(backend, app) is not None
    finally:
        release.set()


def test_the_private_job_loop_is_closed() -> None:
    async def job(ctx: TickContext) -> None:
        pass

    runner = JobRunner(job, lambda ctx, duration, error: None)
    ctx = TickContext(1, 1, 1.0, "a", threading.Event(), MemoryBackend(), "/k")
    runner.start(ctx)
    assert runner.wait_idle(5)
    loop = runner._own_loop
    assert loop is not None
    runner.close()
    assert loop.is_closed()


def test_a_standby_with_the_leaders_id_says_so_and_never_believes_it_leads(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="singleton")
    backend = MemoryBackend()
    rec = Recorder()
    first = Singleton(config("twin"), rec, backend=backend)
    second = Singleton(config("twin"), rec, backend=backend)
    with first:
        wait_for(lambda: first.is_leader, 5, "the first twin to lead")
        with second:
            wait_for(lambda: "carries our id 'twin' but not our lease" in caplog.text, 5, "the warning")
            assert not second.is_leader and second.role is Role.FOLLOWER and second.fencing_token is None
    rec.assert_safe()
