"""The etcd watch: one stream on one member at a time, restarted elsewhere from the last revision it
delivered when that member fails or falls silent, so no event is lost."""
from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import grpc
import grpc.aio
from etcd3.etcdrpc import kv_pb2 as kv_pb
from etcd3.etcdrpc import rpc_pb2 as pb
from etcd3.etcdrpc import rpc_pb2_grpc as pb_grpc

from singleton.backends.abc import KeyValue, WatchEvent
from singleton.backends.etcd import aioloop
from singleton.backends.etcd.errors import PERMISSION_DENIED, translate
from singleton.backends.etcd.wakeup import on_set
from singleton.core.repeats import RepeatedFailures
from singleton.core.errors import AuthError, BackendError, BackendUnavailable, WatchCompacted

if TYPE_CHECKING:
    from singleton.backends.etcd.client import EtcdBackend

log = logging.getLogger("singleton.backends.etcd")


def kv_of(kv: Any) -> KeyValue:
    """etcd's KeyValue message as ours (used by the unary calls too)."""
    return KeyValue(kv.key.decode(), bytes(kv.value), kv.create_revision, kv.mod_revision, kv.lease)


def watch(backend: EtcdBackend, key: str, start_revision: int, stop: threading.Event,
          prefix: bool = False) -> Iterator[WatchEvent]:
    next_revision = start_revision
    failures = 0
    # etcd down for minutes breaks the stream every couple of seconds: the first break in full, then a summary.
    repeats = RepeatedFailures(log, f"watch on {key} broke")
    while not stop.is_set():
        with backend._lock:
            index = backend._current
        stream = _WatchStream(backend, index, key, next_revision, stop, prefix)
        try:
            for event in stream:
                failures = 0
                next_revision = event.revision + 1
                yield event
        except WatchCompacted:
            raise
        except BackendError as err:
            if stop.is_set() or backend.closing:
                # Our own stop (or close) cut the stream: nothing broke, so nothing to warn about.
                log.debug("watch on %s ended by its stop: %s", key, err)
                return
            if stream.heard:  # it worked for a while: a new run of failures
                failures = 0
                repeats.recovered()
            failures += 1
            backend._rotate_from(index)
            repeats.failed(err)
            log.debug("watch on %s restarts from revision %d on %s", key, next_revision,
                      backend._endpoints[(index + 1) % len(backend._endpoints)])
            # Straight to the next member; back off only once every member has failed in a row.
            if failures >= len(backend._endpoints):
                stop.wait(min(0.2 * failures, 2.0))


class _Stopped:
    """Put on a stream's queue when our stop (or an abandoned iterator) cancelled it."""


class _WatchStream:
    """One watch stream on one member. The call lives in the aio loop's thread (aioloop.py), which hands each
    response to the consumer's thread through a queue; the consumer blocks on that queue with no timeout. So an
    idle watch wakes nobody: a member that dies or hangs breaks the stream through the channel's HTTP/2 keepalive
    pings (sent by gRPC's core, see client.py), and our stop cancels the call (wakeup.on_set), with no timer of
    ours anywhere."""

    def __init__(self, backend: EtcdBackend, index: int, key: str, start_revision: int,
                 stop: threading.Event, prefix: bool = False) -> None:
        self._backend, self._index, self._stop = backend, index, stop
        self._where = f"watch {key} via {backend._endpoints[index]}"
        start = key.encode()
        # etcd's range_end for "every key with this prefix": the prefix with its last byte incremented.
        range_end = start[:-1] + bytes([start[-1] + 1]) if prefix else b""
        self._create = pb.WatchRequest(create_request=pb.WatchCreateRequest(
            key=start, range_end=range_end, start_revision=start_revision))
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.heard = False  # the member answered at least once on this stream

    async def _pump(self, metadata: list[tuple[str, str]]) -> None:
        """In the aio loop: open the call, send the create request, queue every response, then how it ended.
        The request side is never closed (etcd would take a half-close for the end of the watch)."""
        put = self._queue.put
        call = None
        try:
            channel = self._backend._aio_channel(self._index)
            call = pb_grpc.WatchStub(channel).Watch(metadata=metadata)
            await call.write(self._create)
            while True:
                item = await call.read()
                if item is grpc.aio.EOF:
                    put(BackendUnavailable(f"{self._where}: stream ended"))
                    return
                put(item)
        except asyncio.CancelledError:
            if call is not None:
                call.cancel()
            put(_Stopped())
        except grpc.RpcError as err:
            put(translate(err, self._where))
        except Exception as err:  # noqa: BLE001 - whatever broke the stream ends it; the consumer must hear
            put(BackendUnavailable(f"{self._where}: {err!r}"))

    def _canceled(self, reason: str, metadata: list[tuple[str, str]]) -> BackendError:
        # etcd cancels a watch created with a token it no longer knows as "permission denied" (it says
        # nothing about the token): drop ours so the restart authenticates afresh.
        if reason.endswith(f"desc = {PERMISSION_DENIED}"):
            self._backend._forget_token(metadata)
            return AuthError(f"{self._where}: canceled by server: {reason}")
        return BackendUnavailable(f"{self._where}: canceled by server: {reason}")

    def __iter__(self) -> Iterator[WatchEvent]:
        backend = self._backend
        try:
            metadata = backend._metadata(backend._channel(self._index),
                                         time.monotonic() + backend._watch_check_timeout_s)
        except grpc.RpcError as err:
            raise translate(err, self._where) from err
        running = aioloop.submit(self._pump(metadata))
        forget_stop = on_set(self._stop, running.cancel)
        try:
            while True:
                item = self._queue.get()  # no timeout: asleep until a response, a failure or our stop
                if isinstance(item, _Stopped):
                    raise BackendUnavailable(f"{self._where}: stopped")
                if isinstance(item, BackendError):
                    raise item
                if not self.heard:
                    self.heard = True
                    backend.watch_opened()
                backend.last_ok_at = time.monotonic()
                if item.compact_revision:
                    raise WatchCompacted(f"{self._where}: compacted at revision {item.compact_revision}")
                if item.canceled:
                    raise self._canceled(item.cancel_reason, metadata)
                for ev in item.events:
                    kv = kv_of(ev.kv)
                    yield WatchEvent(ev.type == kv_pb.Event.DELETE, kv.mod_revision, kv)
        finally:
            if self.heard:
                backend.watch_closed()
            forget_stop()
            running.cancel()  # ends the call in the loop (a no-op once the pump has returned)
