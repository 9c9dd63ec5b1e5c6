"""Lease renewals on one long-lived LeaseKeepAlive stream.

Opening a stream per renewal costs a stream set-up each time and, cancelled after its answer, shows in etcd's
metrics as failed calls. Here the stream of a lease stays open across renewals; each renewal still has its own
deadline (the caller's), and any failure (no answer in time, a broken stream) closes the stream, so the next
renewal opens a fresh one, on whichever member the call path picks. Answers cannot get mixed up: renewals of
a stream go one at a time, and a stream that missed an answer is never used again."""
from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from typing import Any, Callable

import grpc
from etcd3.etcdrpc import rpc_pb2 as pb
from etcd3.etcdrpc import rpc_pb2_grpc as pb_grpc

from singleton.core.errors import BackendTimeout, BackendUnavailable

Metadata = list[tuple[str, str]]


class _Stream:
    def __init__(self, channel: grpc.Channel, lease_id: int, metadata: Metadata) -> None:
        self.channel, self.lease_id, self.metadata = channel, lease_id, metadata
        self.busy = threading.Lock()
        self.retired = False  # forgotten while a renewal waited on it: that renewal closes it when done
        self._requests: queue.Queue[Any] = queue.Queue()
        self._answers: queue.Queue[Any] = queue.Queue()
        # No deadline on the stream itself: it lives across renewals; each renewal bounds its own wait.
        self._call = pb_grpc.LeaseStub(channel).LeaseKeepAlive(self._request_iter(), metadata=metadata)
        threading.Thread(target=self._read, daemon=True, name="singleton-keepalive-reader").start()

    def _request_iter(self) -> Iterator[Any]:
        while (item := self._requests.get()) is not None:
            yield item

    def _read(self) -> None:
        try:
            for resp in self._call:
                self._answers.put(resp)
            self._answers.put(BackendUnavailable("keepalive stream closed without an answer"))
        except grpc.RpcError as err:
            self._answers.put(err)  # the call path translates it (and moves on from an unavailable member)

    def renew(self, timeout_s: float) -> float:
        self._requests.put(pb.LeaseKeepAliveRequest(ID=self.lease_id))
        try:
            answer = self._answers.get(timeout=timeout_s)
        except queue.Empty:
            raise BackendTimeout(f"no keepalive answer within {timeout_s:.2f} s") from None
        if isinstance(answer, BaseException):
            raise answer
        return float(answer.TTL)  # etcd answers 0 for a lease it does not have

    def close(self) -> None:
        self._requests.put(None)
        self._call.cancel()


class KeepAliveStreams:
    """The backend's one open keepalive stream (a replica holds at most one lease at a time)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._stream: _Stream | None = None
        self.opened = 0  # streams opened so far

    def invoke(self, lease_id: int) -> Callable[[grpc.Channel, float, Metadata], float]:
        """One attempt of a renewal on `channel`, for the backend's call path."""
        def attempt(channel: grpc.Channel, remaining_s: float, metadata: Metadata) -> float:
            stream = self._stream_for(channel, lease_id, metadata)
            if not stream.busy.acquire(timeout=remaining_s):
                raise BackendTimeout("another renewal of this lease is still waiting for its answer")
            try:
                return stream.renew(remaining_s)
            except BaseException:
                self._drop(stream)
                raise
            finally:
                stream.busy.release()
                if stream.retired:
                    stream.close()

        return attempt

    def _stream_for(self, channel: grpc.Channel, lease_id: int, metadata: Metadata) -> _Stream:
        with self._lock:
            stream = self._stream
            if stream is not None and (stream.channel, stream.lease_id, stream.metadata) == (channel, lease_id,
                                                                                             metadata):
                return stream
            if stream is not None:
                self._retire(stream)
            self._stream, self.opened = _Stream(channel, lease_id, metadata), self.opened + 1
            return self._stream

    def _drop(self, stream: _Stream) -> None:
        """A failed stream is never used again (it may still owe an answer)."""
        with self._lock:
            if self._stream is stream:
                self._stream = None
        stream.close()

    def forget(self, lease_id: int | None) -> None:
        """Close the stream of `lease_id` (revoked), or any stream (None: the backend closes)."""
        with self._lock:
            stream = self._stream
            if stream is None or (lease_id is not None and stream.lease_id != lease_id):
                return
            self._stream = None
        self._retire(stream)

    @staticmethod
    def _retire(stream: _Stream) -> None:
        # A renewal waiting on it gets its answer (a revoke at stop must not fail the last renewal).
        stream.retired = True
        if stream.busy.acquire(blocking=False):
            stream.close()
            stream.busy.release()
