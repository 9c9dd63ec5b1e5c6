"""Gate your own scheduler (APScheduler, a plain loop) by singleton's leadership.

`Elector(config)` campaigns, leads and steps down exactly as a `Singleton` does (same lease, same fencing token,
same step-down rules) but runs no jobs of its own: your scheduler runs them, and asks the Elector whether it may.

    elector = Elector(Config(endpoints="http://127.0.0.1:2379", name="reports"))
    elector.on_elected(lambda token: scheduler.resume())          # or: async for change in elector.changes()
    elector.on_stepped_down(lambda reason: scheduler.pause())
    scheduler.add_job(elector.guard(report), "cron", minute="*/5")   # checked again right before each run
    with elector: ...

`is_leader` is the safety check a Singleton makes before every run: this replica holds the leader key *and* its
lease has at least `min_remaining_ttl_s` left by the local monotonic clock. A check is a moment, not a promise: a
job that writes somewhere should write through `guarded_put` (or compare `fencing_token` in its own store), which
etcd refuses once the term is over.
"""
from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from singleton.backends.abc import Backend
from singleton.core.clock import Clock
from singleton.core.config import Config
from singleton.core.errors import SingletonError
from singleton.core.lease import StepDownReason
from singleton.runtime.runner import ElectedFn, Singleton, SteppedDownFn

log = logging.getLogger("singleton")

F = TypeVar("F", bound=Callable[..., Any])


class NotLeader(SingletonError):
    """`Elector.check()`: this replica does not lead (or no longer leads the term it was asked about)."""


@dataclass(frozen=True)
class LeadershipChange:
    """One change, as `Elector.changes()` yields it: elected (with the term's token) or stepped down (with why)."""

    leader: bool
    fencing_token: int | None = None  # the new term's token when elected
    reason: StepDownReason | None = None  # why it stepped down (None: elected, or the state at subscription)


def _gate_only(config: Config, backend: Backend | None, clock: Clock | None) -> Singleton:
    """A Singleton that campaigns, leads and steps down, and runs (and claims) nothing."""
    return Singleton(config, backend=backend, clock=clock, gate_only=True)


class _Subscriber:
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.queue: asyncio.Queue[LeadershipChange] = asyncio.Queue()

    def put(self, change: LeadershipChange) -> None:
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, change)
        except RuntimeError:  # the subscriber's loop is closed: nobody listens any more
            pass


class Elector:
    """Leadership without jobs: `is_leader`, `fencing_token`, `wait_until_leader()`, callbacks, `changes()`,
    `guard(fn)` and `check()`. Give it a Config (it makes its own gate-only Singleton) or a Singleton you run."""

    def __init__(self, source: Config | Singleton, *, backend: Backend | None = None,
                 clock: Clock | None = None) -> None:
        self.singleton = source if isinstance(source, Singleton) else _gate_only(source, backend, clock)
        self._lock = threading.Lock()
        self._subscribers: list[_Subscriber] = []
        # Callbacks run on the Singleton's listener thread, in order, never on its safety path.
        self.singleton.on_elected(lambda token: self._publish(LeadershipChange(True, token)))
        self.singleton.on_stepped_down(lambda reason: self._publish(LeadershipChange(False, None, reason)))

    # --- where this replica stands -------------------------------------------------------------------
    @property
    def is_leader(self) -> bool:
        """Holds the leader key with enough lease left to start work now (the check a Singleton makes)."""
        return self.singleton.is_leader

    @property
    def fencing_token(self) -> int | None:
        """The current term's token while leading, else None. It grows with every term."""
        token = self.singleton.fencing_token
        return token if token is not None and self.is_leader else None

    def still_leader(self, token: int | None = None) -> bool:
        """Leads now; with `token`, still in that very term (a term lost and won again has another token)."""
        current = self.fencing_token
        return current is not None and (token is None or current == token)

    def check(self, token: int | None = None) -> int:
        """The current token, or NotLeader: the line to put before a job body."""
        current = self.fencing_token
        if current is None or (token is not None and current != token):
            raise NotLeader(f"{self.singleton.config.name}: not the leader"
                            + ("" if token is None or current is None else f" of term {token} (now {current})"))
        return current

    def wait_until_leader(self, timeout_s: float | None = None) -> bool:
        """Block until this replica leads (True) or `timeout_s` passes (False)."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        version = self.singleton.status_version
        while not self.is_leader:
            left = 0.5 if deadline is None else min(0.5, deadline - time.monotonic())
            if left <= 0:
                return False
            # Woken by every change of role; the bounded wait also covers a lease margin crossed in between.
            version = self.singleton.wait_for_change(version, left)
        return True

    def guarded_put(self, key: str, value: bytes | str, token: int | None = None, timeout_s: float = 2.0) -> bool:
        """Write `key` only while the term `token` (default: the current one) still holds the leader key: etcd
        itself compares, so a replica that lost its term while paused is refused. False when refused."""
        term = self.check(token)
        data = value.encode() if isinstance(value, str) else value
        return self.singleton.backend.guarded_put(self.singleton.config.leader_key, term, key, data, timeout_s)

    def guard(self, fn: F) -> F:
        """`fn`, run only if this replica leads at the moment it is called (else skipped, returning None). For
        a scheduler's job: the scheduler may fire just after a step-down, before it was paused."""
        def skipped() -> None:
            log.debug("%s: not the leader, skipping %s", self.singleton.config.name, getattr(fn, "__qualname__", fn))

        if inspect.iscoroutinefunction(fn):
            @functools.wraps(fn)
            async def guarded_async(*args: Any, **kwargs: Any) -> Any:
                if not self.still_leader():
                    return skipped()
                return await fn(*args, **kwargs)
            return guarded_async  # type: ignore[return-value]

        @functools.wraps(fn)
        def guarded(*args: Any, **kwargs: Any) -> Any:
            if not self.still_leader():
                return skipped()
            return fn(*args, **kwargs)
        return guarded  # type: ignore[return-value]

    # --- changes ---------------------------------------------------------------------------------------
    def on_elected(self, fn: ElectedFn) -> ElectedFn:
        """`fn(token)` on every election, on the listener thread (an `async def` is awaited on your loop)."""
        return self.singleton.on_elected(fn)

    def on_stepped_down(self, fn: SteppedDownFn) -> SteppedDownFn:
        """`fn(reason)` on every step-down, after any job was told to cancel."""
        return self.singleton.on_stepped_down(fn)

    async def changes(self) -> AsyncIterator[LeadershipChange]:
        """The state now, then every change: `async for change in elector.changes(): ...`."""
        subscriber = _Subscriber(asyncio.get_running_loop())
        with self._lock:
            self._subscribers.append(subscriber)
        try:
            last = LeadershipChange(self.is_leader, self.fencing_token)
            yield last
            while True:
                change = await subscriber.queue.get()
                # Not news: the election of the term the first state showed, or a step-down from a term that
                # the first state already showed as over (its lease margin was crossed before the event came).
                if change.leader == last.leader and (not change.leader or change.fencing_token == last.fencing_token):
                    continue
                last = change
                yield change
        finally:
            with self._lock:
                self._subscribers.remove(subscriber)

    def _publish(self, change: LeadershipChange) -> None:
        with self._lock:
            subscribers = list(self._subscribers)
        for subscriber in subscribers:
            subscriber.put(change)

    # --- running -----------------------------------------------------------------------------------------
    def start(self) -> None:
        self.singleton.start()

    def stop(self, timeout_s: float | None = None) -> None:
        """Graceful: hand over and revoke the lease (stop or pause your scheduler first, or on step-down)."""
        self.singleton.stop(timeout_s)

    def run(self, *, handle_signals: bool = True) -> None:
        self.singleton.run(handle_signals=handle_signals)

    def __enter__(self) -> Elector:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def __aenter__(self) -> Elector:
        await self.singleton.__aenter__()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, *exc: object) -> bool:
        return await self.singleton.__aexit__(exc_type, *exc)
