"""Running a job off the ticker thread: up to `max_instances` runs at a time, sync or async, cancellable.

A sync job runs on a worker of the replica's pool (runtime.pool: pre-started threads, bounded, never queued), so a
slow or CPU-heavy job never delays the ticker or the keepalive; an async job runs on the caller's event loop when
the replica was started from asyncio, else on one event-loop thread shared by every job of the replica.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import inspect
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from opentelemetry import trace

from singleton.backends.abc import Backend, Claim
from singleton.core.clock import Clock, SystemClock
from singleton.core.term import RunningJob
from singleton.runtime.arming import Armed
from singleton.runtime.pool import WorkerPool
from singleton.runtime.telemetry import tracer

log = logging.getLogger("singleton")


@dataclass(frozen=True)
class TickContext:
    """What a job gets on every tick."""

    fencing_token: int  # the leader key's create revision: grows with every new term
    slot: int  # the slot this run is for: the Unix second for every-second and cron jobs, k for `every=E` (k * E s)
    scheduled_at: float  # the slot's wall time by its schedule (jitter not included; lateness counts from it + jitter)
    replica_id: str
    cancel_event: threading.Event  # set when the leader steps down or stops: finish up, write nothing more
    _backend: Backend = field(repr=False)
    _leader_key: str = field(repr=False)
    _timeout_s: float = field(repr=False, default=2.0)
    lateness_s: float = 0.0  # how late the tick started after its slot's wall time
    # The run's claim in the run record: guarded writes compare it too, so a run whose claim was superseded
    # (another term ran on) is refused even if it still holds the token.
    _claim: Claim | None = field(repr=False, default=None)
    # A catch-up run (policy "coalesce"): the first and last slot it stands in for; None for an ordinary run.
    coalesced_slots: tuple[int, int] | None = None
    job: str = ""  # the job's name

    @property
    def cancelled(self) -> bool:
        return self.cancel_event.is_set()

    def guarded_put(self, key: str, value: bytes | str) -> bool:
        """Write `key` only while this term's leadership still stands; False when etcd refused (stale token)."""
        data = value.encode() if isinstance(value, str) else value
        return self._backend.guarded_put(self._leader_key, self.fencing_token, key, data, self._timeout_s,
                                         claim=self._claim)

    def guarded_delete(self, key: str) -> bool:
        return self._backend.guarded_delete(self._leader_key, self.fencing_token, key, self._timeout_s,
                                            claim=self._claim)


JobFn = Callable[[TickContext], Any]


_NO_SPAN = contextlib.nullcontext(trace.INVALID_SPAN)


def tick_span(ctx: TickContext) -> Any:
    # No tracer provider installed (no OTLP: setup_telemetry): the span would be a no-op that still costs 0.05-0.1 ms
    # right before the job's first line. A provider installed later is used from its next run on.
    if isinstance(trace.get_tracer_provider(), (trace.ProxyTracerProvider, trace.NoOpTracerProvider)):
        return _NO_SPAN
    return tracer.start_as_current_span("singleton.tick", record_exception=False, attributes={
        "singleton.replica_id": ctx.replica_id, "singleton.fencing_token": ctx.fencing_token,
        "singleton.slot": ctx.slot, "singleton.lateness_s": ctx.lateness_s, "singleton.job": ctx.job})


def outcome(ctx: TickContext, error: BaseException | None) -> str:
    return "failed" if error is not None else "cancelled" if ctx.cancelled else "ok"
DoneFn = Callable[[TickContext, float, BaseException | None], None]


def is_async_job(job: JobFn) -> bool:
    return inspect.iscoroutinefunction(job) or inspect.iscoroutinefunction(getattr(job, "__call__", None))


class AsyncLoop:
    """The event loop async jobs run on: the caller's (embedded in asyncio), else one private loop thread, started
    on first use and shared by every job of a replica."""

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.caller_loop = loop
        self.own_loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def get(self) -> asyncio.AbstractEventLoop:
        if self.caller_loop is not None:
            if self.caller_loop.is_closed():
                raise RuntimeError("the event loop the replica was started from is closed")
            return self.caller_loop
        with self._lock:
            if self.own_loop is None:
                self.own_loop = asyncio.new_event_loop()
                self._thread = threading.Thread(target=self.own_loop.run_forever, daemon=True,
                                                name="singleton-async-jobs")
                self._thread.start()
            return self.own_loop

    def close(self) -> None:
        """Stop and close the private loop (a job still on it is abandoned: the process is ending)."""
        with self._lock:
            loop, thread = self.own_loop, self._thread
            self.own_loop = self._thread = None
        if loop is None or thread is None:
            return
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=1.0)
        if not thread.is_alive():
            loop.close()


@dataclass
class _Tick:
    ctx: TickContext
    started_at: float
    finished: threading.Event = field(default_factory=threading.Event)
    future: concurrent.futures.Future[Any] | None = None
    cancelled_at: float | None = None
    reported: bool = False
    armed: Armed | None = None  # waiting on its worker for its instant (runtime.arming)


class JobRunner:
    """One job's runs, at most `max_instances` at once. Sync runs go to `pool` (a thread of their own per run when
    no pool is given); async runs to `async_loop` (a private one when none is given).

    Never lets a job's exception escape, not even SystemExit or KeyboardInterrupt: the job is the user's, the
    replica is ours. `busy()` turns false whatever way the runs end.
    """

    def __init__(self, job: JobFn, on_done: DoneFn, clock: Clock | None = None,
                 loop: asyncio.AbstractEventLoop | None = None, *, max_instances: int = 1,
                 pool: WorkerPool | None = None, async_loop: AsyncLoop | None = None) -> None:
        self._job, self._on_done = job, on_done
        self._clock = clock or SystemClock()
        self._async = is_async_job(job)
        self._lock = threading.Lock()
        self._loop = async_loop or AsyncLoop(loop)
        self._owns_loop = async_loop is None
        self._pool = pool
        self.max_instances = max_instances
        self._ticks: list[_Tick] = []  # runs not yet finished (finished ones are dropped on the next start)

    @property
    def is_async(self) -> bool:
        return self._async

    @property
    def _own_loop(self) -> asyncio.AbstractEventLoop | None:
        return self._loop.own_loop

    def _live(self) -> list[_Tick]:
        return [t for t in self._ticks if not t.finished.is_set()]

    def busy(self) -> bool:
        """Any run of this job still going."""
        with self._lock:
            return any(not t.finished.is_set() for t in self._ticks)

    def full(self) -> bool:
        """As many runs going as the job allows: a slot due now is skipped (overrun)."""
        with self._lock:
            return len(self._live()) >= self.max_instances

    def running(self) -> RunningJob | None:
        """The oldest run in flight, if any, for the timeout rules (core.term)."""
        runs = self.running_all()
        return runs[0] if runs else None

    def running_all(self) -> list[RunningJob]:
        with self._lock:
            return [RunningJob(t.ctx.slot, t.started_at, t.cancelled_at) for t in self._live()]

    def start(self, ctx: TickContext) -> None:
        """Raises PoolFull (runtime.pool) when no worker is free: the run did not start."""
        with self._lock:
            self._ticks = self._live()
            if len(self._ticks) >= self.max_instances:
                raise RuntimeError("the job already runs as often as it may")  # the ticker checks full() first
            tick = _Tick(ctx, self._clock.monotonic())
            if self._async:
                coro = self._run_async(tick)
                try:
                    tick.future = asyncio.run_coroutine_threadsafe(coro, self._loop.get())
                except BaseException:
                    coro.close()
                    raise
                self._ticks.append(tick)
        if tick.future is not None:
            # A task cancelled before its first step never enters the coroutine (nor its `finally`).
            tick.future.add_done_callback(lambda _f: self._finish(tick, None))
            return
        with self._lock:
            if self._pool is not None:
                self._pool.submit(lambda: self._run_sync(tick))  # PoolFull: not started, not counted as running
            else:
                thread = threading.Thread(target=self._run_sync, args=(tick,), daemon=True,
                                          name=f"singleton-job-{ctx.slot}")
                thread.start()  # may raise (no more threads): the ticker steps down on it
            self._ticks.append(tick)

    def arm(self, ctx: TickContext, armed: Armed) -> bool:
        """Hand the run to a worker now, to start at `armed.at` (runtime.arming); it counts as running from now on
        (overlap, pool), until it is disarmed or refused. False: this runner does not arm (an async job, no pool,
        fewer workers than runs that may go at once, a fake clock): the loop starts it at the slot. Raises PoolFull
        when no worker is free."""
        if self._async or self._pool is None or not self._pool.may_hold_early or \
                not isinstance(self._clock, SystemClock):  # a worker sleeps on the real clock, not a test's fake one
            return False
        with self._lock:
            self._ticks = self._live()
            if len(self._ticks) >= self.max_instances:
                raise RuntimeError("the job already runs as often as it may")  # the ticker checks full() first
            tick = _Tick(ctx, armed.at, armed=armed)
            armed.on_drop = tick.finished.set  # never started: no report, no longer counted as running
            self._pool.submit(lambda: self._run_armed(tick, armed))  # PoolFull: not armed
            self._ticks.append(tick)
        return True

    def _run_armed(self, tick: _Tick, armed: Armed) -> None:
        if not armed.wait():
            return
        tick.started_at = armed.started_at or tick.started_at
        object.__setattr__(tick.ctx, "lateness_s", armed.lateness_s)  # frozen for the job; nobody else has it yet
        self._run_sync(tick)

    async def _run_async(self, tick: _Tick) -> None:
        error: BaseException | None = None
        try:
            with tick_span(tick.ctx) as span:
                try:
                    await self._job(tick.ctx)
                except asyncio.CancelledError:
                    pass  # we cancelled it on step-down: not a job failure
                except BaseException as exc:  # noqa: BLE001 - SystemExit too: it must not stop the shared loop
                    error = exc
                span.set_attribute("singleton.outcome", outcome(tick.ctx, error))
        finally:
            self._finish(tick, error)

    def _run_sync(self, tick: _Tick) -> None:
        error: BaseException | None = None
        try:
            with tick_span(tick.ctx) as span:
                try:
                    result = self._job(tick.ctx)
                    if inspect.isawaitable(result):  # a plain function that returned a coroutine
                        asyncio.run_coroutine_threadsafe(result, self._loop.get()).result()  # type: ignore[arg-type]
                except BaseException as exc:  # noqa: BLE001 - the job's failure is reported, the ticker goes on
                    error = exc
                span.set_attribute("singleton.outcome", outcome(tick.ctx, error))
        finally:
            self._finish(tick, error)

    def _finish(self, tick: _Tick, error: BaseException | None) -> None:
        with self._lock:
            if tick.reported:
                return
            tick.reported = True
        duration = self._clock.monotonic() - tick.started_at
        try:
            # Reported before it counts as finished: the next claim (which folds this run's outcome into the
            # history) and a handover wait for `finished`, so the report is never behind them.
            self._on_done(tick.ctx, duration, error)
        except Exception:  # pragma: no cover - reporting must never kill the job thread
            log.exception("tick report failed")
        finally:
            tick.finished.set()

    def cancel(self, slot: int | None = None) -> None:
        """Tell the runs in flight (or the run of `slot`) to stop: the cancel event is set, an async task cancelled."""
        with self._lock:
            ticks = [t for t in self._live() if slot is None or t.ctx.slot == slot]
            now = self._clock.monotonic()
            for tick in ticks:
                if tick.cancelled_at is None:
                    tick.cancelled_at = now
        for tick in ticks:
            if tick.armed is not None:
                tick.armed.disarm()  # not started yet: it never will
            tick.ctx.cancel_event.set()
            if tick.future is not None:
                tick.future.cancel()

    def wait_idle(self, timeout_s: float) -> bool:
        """Wait until no run of this job is going (at most `timeout_s`)."""
        deadline = self._clock.monotonic() + max(0.0, timeout_s)
        with self._lock:
            ticks = list(self._ticks)
        for tick in ticks:
            if not tick.finished.wait(max(0.0, deadline - self._clock.monotonic())):
                return False
        return True

    def close(self) -> None:
        """Stop and close the private loop, if this runner made it."""
        if self._owns_loop:
            self._loop.close()
