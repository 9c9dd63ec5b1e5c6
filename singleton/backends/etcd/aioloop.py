"""The one thread where the watch streams live, on gRPC's asyncio API.

gRPC's blocking stream iterator wakes its reader every 100 ms (grpc._common.MAXIMUM_WAIT_TIMEOUT) and keeps a
"channel spin" thread polling the call's completion queue every 200 ms, for as long as a stream is open: an idle
standby woke 15 times a second for its watch alone. On grpc.aio a stream waiting for its next message is an
awaiting coroutine: this thread sleeps in epoll with no timeout, and gRPC's aio poller in a wait with no deadline.
The loop runs forever in one daemon thread, started on first use; its channels (one per backend and member) are
created, used and closed only in it."""
from __future__ import annotations

import asyncio
import os
import threading
import weakref
from collections.abc import Callable, Coroutine
from concurrent.futures import Future
from typing import Any, TypeVar

import grpc
import grpc.aio

T = TypeVar("T")
_lock = threading.Lock()
_loop: asyncio.AbstractEventLoop | None = None
# backend -> {member index: channel}; touched only in the loop's thread.
_channels: weakref.WeakKeyDictionary[Any, dict[int, grpc.aio.Channel]] = weakref.WeakKeyDictionary()


def _get_loop() -> asyncio.AbstractEventLoop:
    global _loop
    with _lock:
        if _loop is None or _loop.is_closed():
            loop = asyncio.new_event_loop()
            threading.Thread(target=loop.run_forever, daemon=True, name="singleton-etcd-aio").start()
            _loop = loop
        return _loop


_left_by_parent: list[object] = []  # what a forked child inherited: kept, never finalised (see below)


def _forget_after_fork() -> None:
    """A forked child has no loop thread: it starts its own loop (and channels) on first use. The parent's loop and
    channels are set aside, not dropped: finalising them here joins threads the child does not have, and a
    `subprocess` child with a preexec_fn spun in that join forever before its exec (seen under load in CI)."""
    global _loop, _lock, _channels
    _left_by_parent.append((_loop, _channels))
    _loop, _lock, _channels = None, threading.Lock(), weakref.WeakKeyDictionary()


os.register_at_fork(after_in_child=_forget_after_fork)


def submit(coroutine: Coroutine[Any, Any, T]) -> Future[T]:
    """Run `coroutine` in the loop's thread; cancelling the returned future cancels it there."""
    return asyncio.run_coroutine_threadsafe(coroutine, _get_loop())


def channel(backend: Any, index: int, make: Callable[[], grpc.aio.Channel]) -> grpc.aio.Channel:
    """The backend's aio channel to member `index` (made on first use). Call only from the loop's thread."""
    mine = _channels.setdefault(backend, {})
    found = mine.get(index)
    if found is None:
        found = mine[index] = make()
    return found


def close_channels(backend: Any) -> None:
    """Close the backend's aio channels (their streams end as cancelled). Does not wait, and never blocks."""
    with _lock:
        loop = _loop
    if loop is None or loop.is_closed():
        return

    async def close() -> None:
        for ch in _channels.pop(backend, {}).values():
            await ch.close()

    asyncio.run_coroutine_threadsafe(close(), loop)
