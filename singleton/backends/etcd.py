"""EtcdBackend: every etcd call of the project, over our own gRPC channels.

We drive the generated stubs shipped in python3-etcd3 (`etcd3.etcdrpc`) instead of its client, which
has no per-call deadline, fails over between endpoints only lazily, marks a lone endpoint dead for
300 s, and whose watch thread dies silently when its member goes away. Here every call has a
deadline, a refused endpoint is skipped within the same call, and the watch restarts from the
last revision it delivered. Client errors are translated in exactly one place: `_translate`.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import grpc
from etcd3.etcdrpc import kv_pb2 as kv_pb
from etcd3.etcdrpc import rpc_pb2 as pb
from etcd3.etcdrpc import rpc_pb2_grpc as pb_grpc

from singleton.backends.abc import Backend, CampaignResult, KeyValue, Lease, WatchEvent
from singleton.core.config import Endpoint
from singleton.core.errors import (AuthError, BackendError, BackendTimeout, BackendUnavailable, LeaseNotFound, TlsError,
                     WatchCompacted)
from singleton.core.security import Credentials

log = logging.getLogger(__name__)

_CHANNEL_OPTIONS = [
    # Come back quickly once a member is reachable again (gRPC's default backoff grows to 120 s).
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2000),
    ("grpc.enable_retries", 0),
]


def _translate(err: grpc.RpcError, what: str) -> BackendError:
    """The one place where client errors become SingletonErrors; callers raise it `from err`."""
    code = err.code() if hasattr(err, "code") else None
    details = (err.details() if hasattr(err, "details") else None) or str(err)
    message = f"{what}: {code.name.lower() if code else 'error'}: {details}"
    if code is grpc.StatusCode.DEADLINE_EXCEEDED:
        return BackendTimeout(message)
    lowered = details.lower()
    if code is grpc.StatusCode.UNAVAILABLE and any(w in lowered for w in ("ssl", "handshake", "certificate", "tls")):
        if "verify_failed" in lowered:
            hint = "the etcd server's certificate is not signed by --cacert"
        elif "bad_certificate" in lowered or "certificate_required" in lowered:
            hint = "etcd refused our client certificate (--cert/--key missing, or not signed by its CA)"
        else:
            hint = "TLS handshake failed"
        return TlsError(f"{hint}; {message}")
    if code is grpc.StatusCode.UNAVAILABLE:
        return BackendUnavailable(message)
    if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED) or (
            code is grpc.StatusCode.INVALID_ARGUMENT and ("authentication failed" in lowered or "user" in lowered)):
        return AuthError(message)
    if code is grpc.StatusCode.NOT_FOUND and "lease" in details:
        return LeaseNotFound(message)
    if "compacted" in details:
        return WatchCompacted(message)
    return BackendError(message)


def _kv(kv: Any) -> KeyValue:
    return KeyValue(kv.key.decode(), bytes(kv.value), kv.create_revision, kv.mod_revision, kv.lease)


class EtcdBackend(Backend):
    def __init__(self, endpoints: Sequence[Endpoint], *, credentials: Credentials | None = None,
                 watch_check_interval_s: float = 3.0, watch_check_timeout_s: float = 2.0) -> None:
        if not endpoints:
            raise ValueError("at least one endpoint")
        self._endpoints = list(endpoints)
        self._credentials = credentials
        self._token: str | None = None  # etcd auth token, when a user is configured
        self._lock = threading.Lock()
        self._current = 0
        self._channels: dict[int, grpc.Channel] = {}
        self._watch_check_interval_s = watch_check_interval_s
        self._watch_check_timeout_s = watch_check_timeout_s

    # --- channels and the one call path ------------------------------------------------------------
    def _channel(self, index: int) -> grpc.Channel:
        with self._lock:
            channel = self._channels.get(index)
            if channel is None:
                endpoint = self._endpoints[index]
                if endpoint.secure:
                    creds = self._credentials or Credentials()
                    channel = grpc.secure_channel(endpoint.target, grpc.ssl_channel_credentials(
                        root_certificates=creds.ca, private_key=creds.key, certificate_chain=creds.cert),
                        _CHANNEL_OPTIONS)
                else:
                    channel = grpc.insecure_channel(endpoint.target, _CHANNEL_OPTIONS)
                self._channels[index] = channel
            return channel

    def _rotate_from(self, index: int) -> None:
        with self._lock:
            if self._current == index:
                self._current = (index + 1) % len(self._endpoints)

    def _metadata(self, channel: grpc.Channel, remaining: float) -> list[tuple[str, str]]:
        """The auth token for every call; fetched (Authenticate) when missing or expired."""
        creds = self._credentials
        if creds is None or creds.user is None:
            return []
        if self._token is None:
            resp = pb_grpc.AuthStub(channel).Authenticate(
                pb.AuthenticateRequest(name=creds.user, password=creds.password or ""), timeout=remaining)
            self._token = resp.token
        return [("token", self._token or "")]

    def _call(self, what: str, invoke: Callable[[grpc.Channel, float], Any], timeout_s: float) -> Any:
        """Run `invoke(channel, remaining_s)` on the current endpoint; on a refusal try the next ones
        within the same deadline. A timeout is not retried (its deadline is spent) but moves the next
        call to another member, so a hung member costs one failed call, not all of them."""
        deadline = time.monotonic() + timeout_s
        with self._lock:
            start = self._current
        last: grpc.RpcError | None = None
        for step in range(len(self._endpoints)):
            index = (start + step) % len(self._endpoints)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                result = invoke(self._channel(index), remaining)
            except grpc.RpcError as err:
                last = err
                if err.code() is grpc.StatusCode.UNAUTHENTICATED and self._token is not None:
                    self._token = None  # expired (etcd's simple tokens live 5 minutes): authenticate again
                    try:
                        result = invoke(self._channel(index), deadline - time.monotonic())
                    except grpc.RpcError as again:
                        raise _translate(again, f"{what} via {self._endpoints[index]}") from again
                    self.last_ok_at = time.monotonic()
                    return result
                self._rotate_from(index)
                if err.code() is grpc.StatusCode.UNAVAILABLE:
                    continue
                raise _translate(err, f"{what} via {self._endpoints[index]}") from err
            with self._lock:
                self._current = index
            self.last_ok_at = time.monotonic()
            return result
        if last is None:
            raise BackendTimeout(f"{what}: deadline of {timeout_s:g} s spent before any endpoint answered")
        raise _translate(last, f"{what} (tried {len(self._endpoints)} endpoint(s))") from last

    def _unary(self, what: str, stub_cls: Any, method: str, request: Any, timeout_s: float) -> Any:
        return self._call(what, lambda ch, t: getattr(stub_cls(ch), method)(
            request, timeout=t, metadata=self._metadata(ch, t)), timeout_s)

    @classmethod
    def from_config(cls, config: Any, **kwargs: Any) -> EtcdBackend:
        return cls(config.endpoints, credentials=config.credentials, **kwargs)

    def check_write_access(self, key: str, timeout_s: float) -> None:
        """Authenticate and prove we may write `key`, changing nothing: etcd checks the permissions of
        every operation in a transaction, also those of a branch that does not run."""
        never = pb.Compare(key=key.encode(), target=pb.Compare.VERSION, result=pb.Compare.EQUAL, version=-1)
        put = pb.RequestOp(request_put=pb.PutRequest(key=key.encode(), value=b""))
        self._txn(f"check write access to {key}", pb.TxnRequest(compare=[never], success=[put]), timeout_s)

    # --- leases --------------------------------------------------------------------------------------
    def grant_lease(self, ttl_s: int, timeout_s: float) -> Lease:
        resp = self._unary("grant lease", pb_grpc.LeaseStub, "LeaseGrant", pb.LeaseGrantRequest(TTL=int(ttl_s)), timeout_s)
        if resp.error:
            raise BackendError(f"grant lease: {resp.error}")
        return Lease(resp.ID, float(resp.TTL))

    def keep_alive_once(self, lease_id: int, timeout_s: float) -> float:
        def invoke(channel: grpc.Channel, remaining: float) -> float:
            stream = pb_grpc.LeaseStub(channel).LeaseKeepAlive(iter([pb.LeaseKeepAliveRequest(ID=lease_id)]),
                                                               timeout=remaining,
                                                               metadata=self._metadata(channel, remaining))
            try:
                for resp in stream:
                    return float(resp.TTL)
                raise BackendUnavailable("keepalive stream closed without an answer")
            finally:
                stream.cancel()

        return float(self._call(f"renew lease {lease_id:x}", invoke, timeout_s))

    def lease_remaining_s(self, lease_id: int, timeout_s: float) -> float:
        resp = self._unary(f"lease {lease_id:x} TTL", pb_grpc.LeaseStub, "LeaseTimeToLive",
                           pb.LeaseTimeToLiveRequest(ID=lease_id), timeout_s)
        return float(resp.TTL)  # etcd answers -1 for a lease it does not have

    def revoke_lease(self, lease_id: int, timeout_s: float) -> None:
        try:
            self._unary(f"revoke lease {lease_id:x}", pb_grpc.LeaseStub, "LeaseRevoke",
                        pb.LeaseRevokeRequest(ID=lease_id), timeout_s)
        except LeaseNotFound:
            pass  # already expired or revoked: the goal is reached

    # --- keys ----------------------------------------------------------------------------------------
    def _txn(self, what: str, request: pb.TxnRequest, timeout_s: float) -> Any:
        return self._unary(what, pb_grpc.KVStub, "Txn", request, timeout_s)

    @staticmethod
    def _created_as(key: str, fencing_token: int) -> Any:
        return pb.Compare(key=key.encode(), target=pb.Compare.CREATE, result=pb.Compare.EQUAL,
                          create_revision=fencing_token)

    def campaign(self, key: str, value: bytes, lease_id: int, timeout_s: float,
                 also_read: tuple[str, ...] = ()) -> CampaignResult:
        reads = [pb.RequestOp(request_range=pb.RangeRequest(key=k.encode())) for k in (key, *also_read)]
        request = pb.TxnRequest(
            compare=[self._created_as(key, 0)],
            success=[pb.RequestOp(request_put=pb.PutRequest(key=key.encode(), value=value, lease=lease_id)), *reads],
            failure=reads,
        )
        resp = self._txn(f"campaign for {key}", request, timeout_s)
        ranges = [r.response_range for r in resp.responses if r.WhichOneof("response") == "response_range"]
        found = [_kv(r.kvs[0]) if r.kvs else None for r in ranges]
        leader, extra = found[0], {k: kv for k, kv in zip(also_read, found[1:]) if kv is not None}
        # A retried campaign whose first try applied but whose answer was lost finds its own lease on the key.
        won = resp.succeeded or (leader is not None and leader.lease_id == lease_id)
        return CampaignResult(won, resp.header.revision, leader, extra)

    def get(self, key: str, timeout_s: float) -> tuple[KeyValue | None, int]:
        resp = self._unary(f"get {key}", pb_grpc.KVStub, "Range", pb.RangeRequest(key=key.encode()), timeout_s)
        return (_kv(resp.kvs[0]) if resp.kvs else None), resp.header.revision

    def guarded_put(self, leader_key: str, fencing_token: int, key: str, value: bytes, timeout_s: float) -> bool:
        request = pb.TxnRequest(compare=[self._created_as(leader_key, fencing_token)],
                                success=[pb.RequestOp(request_put=pb.PutRequest(key=key.encode(), value=value))])
        return bool(self._txn(f"guarded put {key}", request, timeout_s).succeeded)

    def guarded_delete(self, leader_key: str, fencing_token: int, key: str, timeout_s: float) -> bool:
        request = pb.TxnRequest(compare=[self._created_as(leader_key, fencing_token)],
                                success=[pb.RequestOp(request_delete_range=pb.DeleteRangeRequest(key=key.encode()))])
        return bool(self._txn(f"guarded delete {key}", request, timeout_s).succeeded)

    def resign(self, leader_key: str, fencing_token: int, handover_key: str, handover: bytes,
               timeout_s: float) -> bool:
        request = pb.TxnRequest(
            compare=[self._created_as(leader_key, fencing_token)],
            success=[pb.RequestOp(request_put=pb.PutRequest(key=handover_key.encode(), value=handover)),
                     pb.RequestOp(request_delete_range=pb.DeleteRangeRequest(key=leader_key.encode()))])
        return bool(self._txn(f"resign {leader_key}", request, timeout_s).succeeded)

    # --- watch ---------------------------------------------------------------------------------------
    def watch(self, key: str, start_revision: int, stop: threading.Event) -> Iterator[WatchEvent]:
        next_revision = start_revision
        failures = 0
        while not stop.is_set():
            with self._lock:
                index = self._current
            try:
                for event in _WatchStream(self, index, key, next_revision, stop):
                    failures = 0
                    next_revision = event.revision + 1
                    yield event
            except WatchCompacted:
                raise
            except BackendError as err:
                failures += 1
                self._rotate_from(index)
                log.warning("watch on %s broke (%s); restarting from revision %d on %s", key, err, next_revision,
                            self._endpoints[(index + 1) % len(self._endpoints)])
                # Straight to the next member; back off only once every member has failed in a row.
                if failures >= len(self._endpoints):
                    stop.wait(min(0.2 * failures, 2.0))

    def close(self) -> None:
        with self._lock:
            channels, self._channels = list(self._channels.values()), {}
        for channel in channels:
            channel.close()


class _WatchStream:
    """One watch stream on one member. A reader thread hands responses over a queue, so that the
    consumer can notice a silent member: when nothing arrives for a while it asks for a progress
    notification, and a member that does not answer that in time is given up on."""

    def __init__(self, backend: EtcdBackend, index: int, key: str, start_revision: int,
                 stop: threading.Event) -> None:
        self._backend, self._index, self._stop = backend, index, stop
        self._where = f"watch {key} via {backend._endpoints[index]}"
        self._requests: queue.Queue[Any] = queue.Queue()
        self._requests.put(pb.WatchRequest(create_request=pb.WatchCreateRequest(
            key=key.encode(), start_revision=start_revision)))
        self._responses: queue.Queue[Any] = queue.Queue()

    def _request_iter(self) -> Iterator[Any]:
        while True:
            item = self._requests.get()
            if item is None:
                return
            yield item

    def _read(self, call: Any) -> None:
        try:
            for resp in call:
                self._responses.put(resp)
            self._responses.put(BackendUnavailable(f"{self._where}: stream ended"))
        except grpc.RpcError as err:
            self._responses.put(_translate(err, self._where))

    def __iter__(self) -> Iterator[WatchEvent]:
        backend = self._backend
        channel = backend._channel(self._index)
        try:
            metadata = backend._metadata(channel, backend._watch_check_timeout_s)
        except grpc.RpcError as err:
            raise _translate(err, self._where) from err
        call = pb_grpc.WatchStub(channel).Watch(self._request_iter(), metadata=metadata)
        threading.Thread(target=self._read, args=(call,), daemon=True, name="singleton-watch-reader").start()
        last_heard, asked_at = time.monotonic(), None
        try:
            while not self._stop.is_set():
                try:
                    item = self._responses.get(timeout=0.1)
                except queue.Empty:
                    now = time.monotonic()
                    if asked_at is not None and now - asked_at > backend._watch_check_timeout_s:
                        raise BackendTimeout(f"{self._where}: member silent for {now - last_heard:.1f} s") from None
                    if asked_at is None and now - last_heard > backend._watch_check_interval_s:
                        self._requests.put(pb.WatchRequest(progress_request=pb.WatchProgressRequest()))
                        asked_at = now
                    continue
                if isinstance(item, BackendError):
                    raise item
                last_heard, asked_at = time.monotonic(), None
                backend.last_ok_at = last_heard
                if item.compact_revision:
                    raise WatchCompacted(f"{self._where}: compacted at revision {item.compact_revision}")
                if item.canceled:
                    raise BackendUnavailable(f"{self._where}: canceled by server: {item.cancel_reason}")
                for ev in item.events:
                    kv = _kv(ev.kv)
                    yield WatchEvent(ev.type == kv_pb.Event.DELETE, kv.mod_revision, kv)
        finally:
            self._requests.put(None)
            call.cancel()
