"""The etcd watch: one stream on one member at a time, restarted elsewhere from the last revision it
delivered when that member fails or falls silent, so no event is lost."""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import grpc
from etcd3.etcdrpc import kv_pb2 as kv_pb
from etcd3.etcdrpc import rpc_pb2 as pb
from etcd3.etcdrpc import rpc_pb2_grpc as pb_grpc

from singleton.backends.abc import KeyValue, WatchEvent
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


class _WatchStream:
    """One watch stream on one member, read in the consumer's own thread: an idle watch blocks in gRPC and wakes
    for nothing. A member that dies or hangs breaks the stream through the channel's HTTP/2 keepalive pings (sent
    by gRPC's core, see client.py); our stop cancels the call (wakeup.on_set), so no timer of ours runs."""

    def __init__(self, backend: EtcdBackend, index: int, key: str, start_revision: int,
                 stop: threading.Event, prefix: bool = False) -> None:
        self._backend, self._index, self._stop = backend, index, stop
        self._where = f"watch {key} via {backend._endpoints[index]}"
        start = key.encode()
        # etcd's range_end for "every key with this prefix": the prefix with its last byte incremented.
        range_end = start[:-1] + bytes([start[-1] + 1]) if prefix else b""
        self._create = pb.WatchRequest(create_request=pb.WatchCreateRequest(
            key=start, range_end=range_end, start_revision=start_revision))
        self._done = threading.Event()  # ends the request stream, which would otherwise half-close the call
        self.heard = False  # the member answered at least once on this stream

    def _request_iter(self) -> Iterator[Any]:
        yield self._create
        self._done.wait()

    def _canceled(self, reason: str, metadata: list[tuple[str, str]]) -> BackendError:
        # etcd cancels a watch created with a token it no longer knows as "permission denied" (it says
        # nothing about the token): drop ours so the restart authenticates afresh.
        if reason.endswith(f"desc = {PERMISSION_DENIED}"):
            self._backend._forget_token(metadata)
            return AuthError(f"{self._where}: canceled by server: {reason}")
        return BackendUnavailable(f"{self._where}: canceled by server: {reason}")

    def __iter__(self) -> Iterator[WatchEvent]:
        backend = self._backend
        channel = backend._channel(self._index)
        try:
            metadata = backend._metadata(channel, time.monotonic() + backend._watch_check_timeout_s)
        except grpc.RpcError as err:
            raise translate(err, self._where) from err
        call = pb_grpc.WatchStub(channel).Watch(self._request_iter(), metadata=metadata)
        forget_stop = on_set(self._stop, call.cancel)
        responses = iter(call)
        try:
            while True:
                try:
                    item = next(responses)
                except StopIteration:
                    raise BackendUnavailable(f"{self._where}: stream ended") from None
                except grpc.RpcError as err:
                    raise translate(err, self._where) from err
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
            self._done.set()
            call.cancel()
