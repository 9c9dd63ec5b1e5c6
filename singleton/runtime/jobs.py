"""Running the user's job off the ticker thread: one tick at a time, sync or async, cancellable.

A sync job runs in a thread of its own per tick, so a slow or CPU-heavy job never delays the ticker
or the keepalive; an async job runs on one event-loop thread kept for the purpose.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from singleton.backends.abc import Backend, Claim
from singleton.core.clock import Clock, SystemClock
from singleton.core.term import RunningJob
from singleton.runtime.telemetry import tracer

log = logging.getLogger("singleton")


@dataclass(frozen=True)
class TickContext:
    """What a job gets on every tick."""

    fencing_token: int  # the leader key's create revision: grows with every new term
    slot: int  # the whole Unix second this tick is for
    scheduled_at: float  # the slot's wall time (== slot)
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


def tick_span(ctx: TickContext) -> Any:
    return tracer.start_as_current_span("singleton.tick", record_exception=False, attributes={
        "singleton.replica_id": ctx.replica_id, "singleton.fencing_token": ctx.fencing_token,
        "singleton.slot": ctx.slot, "singleton.lateness_s": ctx.lateness_s})


def outcome(ctx: TickContext, error: BaseException | None) -> str:
    return "failed" if error is not None else "cancelled" if ctx.cancelled else "ok"
DoneFn = Callable[[TickContext, float, BaseException | None], None]


def is_async_job(job: JobFn) -> bool:
    return inspect.iscoroutinefunction(job) or inspect.iscoroutinefunction(getattr(job, "__call__", None))


@dataclass
class _Tick:
    ctx: TickContext
    started_at: float
    finished: threading.Event = field(default_factory=threading.Event)
    future: concurrent.futures.Future[Any] | None = None
    cancelled_at: float | None = None
    reported: bool = False


class JobRunner:
    """One tick at a time. Sync jobs get a thread of their own per tick; async jobs run on the caller's event
    loop when the replica was started from asyncio (`run_async`, `async with`), else on a private loop thread.

    Never lets a job's exception escape, not even SystemExit or KeyboardInterrupt: the job is the user's, the
    replica is ours. `busy()` turns false whatever way the job ends.
    """

    def __init__(self, job: JobFn, on_done: DoneFn, clock: Clock | None = None,
                 loop: asyncio.AbstractEventLoop | None = None) -> None:
        self._job, self._on_done = job, on_done
        self._clock = clock or SystemClock()
        self._async = is_async_job(job)
        self._lock = threading.Lock()
        self._caller_loop = loop
        self._own_loop: asyncio.AbstractEventLoop | None = None
        self._own_loop_thread: threading.Thread | None = None
        self._tick: _Tick | None = None

    def busy(self) -> bool:
        with self._lock:
            return self._tick is not None and not self._tick.finished.is_set()

    def running(self) -> RunningJob | None:
        """The tick in flight, if any, for the timeout rules (core.term)."""
        with self._lock:
            tick = self._tick
            if tick is None or tick.finished.is_set():
                return None
            return RunningJob(tick.ctx.slot, tick.started_at, tick.cancelled_at)

    def start(self, ctx: TickContext) -> None:
        with self._lock:
            if self._tick is not None and not self._tick.finished.is_set():
                raise RuntimeError("a tick is already running")  # the ticker checks busy() first
            tick = _Tick(ctx, self._clock.monotonic())
            if self._async:
                coro = self._run_async(tick)
                try:
                    tick.future = asyncio.run_coroutine_threadsafe(coro, self._event_loop())
                except BaseException:
                    coro.close()
                    raise
                self._tick = tick
        if tick.future is not None:
            # A task cancelled before its first step never enters the coroutine (nor its `finally`).
            tick.future.add_done_callback(lambda _f: self._finish(tick, None))
        else:
            with self._lock:
                thread = threading.Thread(target=self._run_sync, args=(tick,), daemon=True,
                                          name=f"singleton-job-{ctx.slot}")
                thread.start()  # may raise (no more threads): the ticker steps down on it
                self._tick = tick

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
                        asyncio.run_coroutine_threadsafe(result, self._event_loop()).result()  # type: ignore[arg-type]
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

    def _event_loop(self) -> asyncio.AbstractEventLoop:
        if self._caller_loop is not None:
            if self._caller_loop.is_closed():
                raise RuntimeError("the event loop the replica was started from is closed")
            return self._caller_loop
        if self._own_loop is None:
            self._own_loop = asyncio.new_event_loop()
            self._own_loop_thread = threading.Thread(target=self._own_loop.run_forever, daemon=True,
                                                     name="singleton-async-jobs")
            self._own_loop_thread.start()
        return self._own_loop

    def cancel(self) -> None:
        """Tell the running tick to stop: its cancel event is set, an async job's task is cancelled."""
        with self._lock:
            tick = self._tick
            if tick is None or tick.finished.is_set():
                return
            if tick.cancelled_at is None:
                tick.cancelled_at = self._clock.monotonic()
        tick.ctx.cancel_event.set()
        if tick.future is not None:
            tick.future.cancel()

    def wait_idle(self, timeout_s: float) -> bool:
        with self._lock:
            tick = self._tick
        return tick is None or tick.finished.wait(max(0.0, timeout_s))

    def close(self) -> None:
        """Stop and close the private loop (a job still on it is abandoned: the process is ending)."""
        loop, thread = self._own_loop, self._own_loop_thread
        self._own_loop = self._own_loop_thread = None
        if loop is None or thread is None:
            return
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=1.0)
        if not thread.is_alive():
            loop.close()
