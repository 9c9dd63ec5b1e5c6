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
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from singleton.backends.abc import Backend
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

    @property
    def cancelled(self) -> bool:
        return self.cancel_event.is_set()

    def guarded_put(self, key: str, value: bytes | str) -> bool:
        """Write `key` only while this term's leadership still stands; False when etcd refused (stale token)."""
        data = value.encode() if isinstance(value, str) else value
        return self._backend.guarded_put(self._leader_key, self.fencing_token, key, data, self._timeout_s)

    def guarded_delete(self, key: str) -> bool:
        return self._backend.guarded_delete(self._leader_key, self.fencing_token, key, self._timeout_s)


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


class JobRunner:
    def __init__(self, job: JobFn, on_done: DoneFn) -> None:
        self._job, self._on_done = job, on_done
        self._async = is_async_job(job)
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._running: tuple[TickContext, threading.Event, concurrent.futures.Future[Any] | None] | None = None

    def busy(self) -> bool:
        with self._lock:
            return self._running is not None and not self._running[1].is_set()

    def start(self, ctx: TickContext) -> None:
        finished = threading.Event()
        with self._lock:
            if self._running is not None and not self._running[1].is_set():
                raise RuntimeError("a tick is already running")  # the ticker checks busy() first
            started = time.monotonic()
            if self._async:
                future = asyncio.run_coroutine_threadsafe(self._run_async(ctx, started, finished), self._event_loop())
                self._running = (ctx, finished, future)
            else:
                self._running = (ctx, finished, None)
                threading.Thread(target=self._run_sync, args=(ctx, started, finished), daemon=True,
                                 name=f"singleton-job-{ctx.slot}").start()

    async def _run_async(self, ctx: TickContext, started: float, finished: threading.Event) -> None:
        error: BaseException | None = None
        with tick_span(ctx) as span:
            try:
                await self._job(ctx)
            except asyncio.CancelledError:
                pass  # we cancelled it on step-down: not a job failure
            except Exception as exc:  # noqa: BLE001 - reported, the ticker goes on
                error = exc
            span.set_attribute("singleton.outcome", outcome(ctx, error))
        self._finish(ctx, started, finished, error)

    def _run_sync(self, ctx: TickContext, started: float, finished: threading.Event) -> None:
        error: BaseException | None = None
        with tick_span(ctx) as span:
            try:
                result = self._job(ctx)
                if inspect.isawaitable(result):  # a plain function that returned a coroutine
                    asyncio.run_coroutine_threadsafe(result, self._event_loop()).result()  # type: ignore[arg-type]
            except BaseException as exc:  # noqa: BLE001 - the job's failure is reported, the ticker goes on
                error = exc
            span.set_attribute("singleton.outcome", outcome(ctx, error))
        self._finish(ctx, started, finished, error)

    def _finish(self, ctx: TickContext, started: float, finished: threading.Event, error: BaseException | None) -> None:
        duration = time.monotonic() - started
        finished.set()
        try:
            self._on_done(ctx, duration, error)
        except Exception:  # pragma: no cover - reporting must never kill the job thread
            log.exception("tick report failed")

    def _event_loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
            threading.Thread(target=self._loop.run_forever, daemon=True, name="singleton-async-jobs").start()
        return self._loop

    def cancel(self) -> None:
        """Tell the running tick to stop: its cancel event is set, an async job's task is cancelled."""
        with self._lock:
            running = self._running
        if running is not None and not running[1].is_set():
            running[0].cancel_event.set()
            if running[2] is not None:
                running[2].cancel()

    def wait_idle(self, timeout_s: float) -> bool:
        with self._lock:
            running = self._running
        return running is None or running[1].wait(timeout_s)

    def close(self) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
