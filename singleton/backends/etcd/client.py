"""EtcdBackend: every etcd call of the project, over our own gRPC channels.

We drive the generated stubs shipped in python3-etcd3 (`etcd3.etcdrpc`) instead of its client, which
has no per-call deadline, fails over between endpoints only lazily, marks a lone endpoint dead for
300 s, and whose watch thread dies silently when its member goes away. Here every call has one
deadline that covers everything it does (authenticating included), a refused endpoint is skipped
within the same call, and the watch (watch.py) restarts from the last revision it delivered. Client
errors are translated in exactly one place: errors.py.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import grpc
import grpc.aio
from etcd3.etcdrpc import rpc_pb2 as pb
from etcd3.etcdrpc import rpc_pb2_grpc as pb_grpc

from singleton.backends.abc import Backend, CampaignResult, Claim, KeyValue, Lease, WatchEvent, campaign_won
from singleton.backends.etcd import aioloop
from singleton.backends.etcd.errors import token_rejected, translate
from singleton.backends.etcd.keepalive import KeepAliveStreams as _KeepAliveStreams
from singleton.backends.etcd.watch import kv_of, watch
from singleton.core.config import Endpoint
from singleton.core.errors import BackendError, BackendTimeout, LeaseNotFound
from singleton.core.security import Credentials

Metadata = list[tuple[str, str]]
# One attempt of a call on one channel: (channel, seconds left, auth metadata) -> answer.
Invoke = Callable[[grpc.Channel, float, Metadata], Any]

_CHANNEL_OPTIONS = [
    # Come back quickly once a member is reachable again (gRPC's default backoff grows to 120 s).
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2000),
    ("grpc.enable_retries", 0),
]
# etcd refuses client pings closer together than its --grpc-keepalive-min-time (5 s by default) and then drops
# the connection ("too_many_pings"): the watch's liveness pings never come faster than this.
_MIN_PING_INTERVAL_S = 5.0


def _left(deadline: float, what: str) -> float:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise BackendTimeout(f"{what}: deadline spent")
    return remaining


class EtcdBackend(Backend):
    def __init__(self, endpoints: Sequence[Endpoint], *, credentials: Credentials | None = None,
                 watch_check_interval_s: float = _MIN_PING_INTERVAL_S, watch_check_timeout_s: float = 2.0) -> None:
        if not endpoints:
            raise ValueError("at least one endpoint")
        self._endpoints = list(endpoints)
        self._credentials = credentials
        self._token: str | None = None  # etcd auth token, when a user is configured
        self._lock = threading.Lock()
        self._current = 0
        self._channels: dict[int, grpc.Channel] = {}
        # While a stream is open, gRPC's core pings the member this often and breaks the stream when a ping goes
        # unanswered for the timeout: a hung member is noticed with no timer of ours (an idle watch never wakes).
        self._watch_check_interval_s = max(_MIN_PING_INTERVAL_S, watch_check_interval_s)
        self._watch_check_timeout_s = watch_check_timeout_s
        self._last_ok_at = float("-inf")
        self._open_watches = 0  # answered watch streams still open: each proves the connection alive (pings)
        self._keepalive = _KeepAliveStreams()
        self.closing = False  # set by close(): a watch cut by it is not a failure

    @property
    def last_ok_at(self) -> float:
        """Now, while an answered watch stream is open (its keepalive pings would have broken it otherwise);
        else the time of the last answer."""
        with self._lock:
            return time.monotonic() if self._open_watches else self._last_ok_at

    @last_ok_at.setter
    def last_ok_at(self, value: float) -> None:
        self._last_ok_at = value

    def watch_opened(self) -> None:
        with self._lock:
            self._open_watches += 1

    def watch_closed(self) -> None:
        with self._lock:
            self._open_watches -= 1
            self._last_ok_at = time.monotonic()

    @classmethod
    def from_config(cls, config: Any, **kwargs: Any) -> EtcdBackend:
        return cls(config.endpoints, credentials=config.credentials, **kwargs)

    # --- channels, auth and the one call path --------------------------------------------------------
    def _channel_options(self) -> list[tuple[str, int]]:
        return [*_CHANNEL_OPTIONS,
                ("grpc.keepalive_time_ms", int(self._watch_check_interval_s * 1000)),
                ("grpc.keepalive_timeout_ms", int(self._watch_check_timeout_s * 1000)),
                # gRPC 1.85 bounds a keepalive ping's wait by the generic ping timeout (60 s), not the one above.
                ("grpc.http2.ping_timeout_ms", int(self._watch_check_timeout_s * 1000)),
                ("grpc.keepalive_permit_without_calls", 0),  # only while a stream is open: etcd's policy
                ("grpc.http2.max_pings_without_data", 0)]  # an idle watch sends no data, yet must be pinged

    def _ssl_credentials(self, index: int) -> grpc.ChannelCredentials | None:
        if not self._endpoints[index].secure:
            return None
        creds = self._credentials or Credentials()
        return grpc.ssl_channel_credentials(root_certificates=creds.ca, private_key=creds.key,
                                            certificate_chain=creds.cert)

    def _channel(self, index: int) -> grpc.Channel:
        with self._lock:
            channel = self._channels.get(index)
            if channel is None:
                target, ssl = self._endpoints[index].target, self._ssl_credentials(index)
                channel = (grpc.insecure_channel(target, self._channel_options()) if ssl is None
                           else grpc.secure_channel(target, ssl, self._channel_options()))
                self._channels[index] = channel
            return channel

    def _aio_channel(self, index: int) -> grpc.aio.Channel:
        """The watches' channel to member `index`, on grpc.aio (aioloop.py); call only in the aio loop's thread."""
        def make() -> grpc.aio.Channel:
            target, ssl = self._endpoints[index].target, self._ssl_credentials(index)
            return (grpc.aio.insecure_channel(target, self._channel_options()) if ssl is None
                    else grpc.aio.secure_channel(target, ssl, self._channel_options()))
        return aioloop.channel(self, index, make)

    def _rotate_from(self, index: int) -> None:
        with self._lock:
            if self._current == index:
                self._current = (index + 1) % len(self._endpoints)

    def _metadata(self, channel: grpc.Channel, deadline: float) -> Metadata:
        """The auth token for a call; fetched (Authenticate) when missing, within the call's deadline."""
        creds = self._credentials
        if creds is None or creds.user is None:
            return []
        token = self._token
        if token is None:
            resp = pb_grpc.AuthStub(channel).Authenticate(
                pb.AuthenticateRequest(name=creds.user, password=creds.password or ""),
                timeout=_left(deadline, "authenticate"))
            token = self._token = resp.token
        return [("token", token)]

    def _forget_token(self, metadata: Metadata) -> None:
        """Drop the token a call was refused with, unless another call has already replaced it."""
        with self._lock:
            if metadata and self._token == metadata[0][1]:
                self._token = None

    def _attempt(self, channel: grpc.Channel, invoke: Invoke, deadline: float) -> Any:
        metadata = self._metadata(channel, deadline)
        try:
            return invoke(channel, _left(deadline, "call"), metadata)
        except grpc.RpcError as err:
            if not (metadata and token_rejected(err)):
                raise
        # Our token expired (etcd forgets simple tokens unused for 5 minutes) or was invalidated:
        # authenticate again and retry once, still within the same deadline.
        self._forget_token(metadata)
        metadata = self._metadata(channel, deadline)
        return invoke(channel, _left(deadline, "call"), metadata)

    def _call(self, what: str, invoke: Invoke, timeout_s: float) -> Any:
        """Run `invoke` on the current endpoint; on a refusal try the next ones within the same
        deadline. A timeout is not retried (its deadline is spent) but moves the next call to another
        member, so a hung member costs one failed call, not all of them."""
        deadline = time.monotonic() + timeout_s
        with self._lock:
            start = self._current
        last: grpc.RpcError | None = None
        for step in range(len(self._endpoints)):
            index = (start + step) % len(self._endpoints)
            if deadline - time.monotonic() <= 0:
                break
            try:
                result = self._attempt(self._channel(index), invoke, deadline)
            except BackendTimeout as err:
                self._rotate_from(index)
                raise BackendTimeout(f"{what} via {self._endpoints[index]}: {err}") from err
            except grpc.RpcError as err:
                last = err
                self._rotate_from(index)
                if err.code() is grpc.StatusCode.UNAVAILABLE:
                    continue
                raise translate(err, f"{what} via {self._endpoints[index]}") from err
            with self._lock:
                self._current = index
            self.last_ok_at = time.monotonic()
            return result
        if last is None:
            raise BackendTimeout(f"{what}: deadline of {timeout_s:g} s spent before any endpoint answered")
        raise translate(last, f"{what} (tried {len(self._endpoints)} endpoint(s))") from last

    def _unary(self, what: str, stub_cls: Any, method: str, request: Any, timeout_s: float) -> Any:
        return self._call(what, lambda ch, t, md: getattr(stub_cls(ch), method)(request, timeout=t, metadata=md),
                          timeout_s)

    def check_write_access(self, key: str, timeout_s: float) -> None:
        """Authenticate and prove we may write `key`, changing nothing: etcd checks the permissions of
        every operation in a transaction, also those of a branch that does not run."""
        never = pb.Compare(key=key.encode(), target=pb.Compare.VERSION, result=pb.Compare.EQUAL, version=-1)
        put = pb.RequestOp(request_put=pb.PutRequest(key=key.encode(), value=b""))
        self._txn(f"check write access to {key}", pb.TxnRequest(compare=[never], success=[put]), timeout_s)

    # --- leases --------------------------------------------------------------------------------------
    def grant_lease(self, ttl_s: int, timeout_s: float) -> Lease:
        resp = self._unary("grant lease", pb_grpc.LeaseStub, "LeaseGrant", pb.LeaseGrantRequest(TTL=int(ttl_s)),
                           timeout_s)
        if resp.error:
            raise BackendError(f"grant lease: {resp.error}")
        return Lease(resp.ID, float(resp.TTL))

    def keep_alive_once(self, lease_id: int, timeout_s: float) -> float:
        """One renewal with its own deadline, sent on the lease's one open LeaseKeepAlive stream (keepalive.py)."""
        return float(self._call(f"renew lease {lease_id:x}", self._keepalive.invoke(lease_id), timeout_s))

    def lease_remaining_s(self, lease_id: int, timeout_s: float) -> float:
        resp = self._unary(f"lease {lease_id:x} TTL", pb_grpc.LeaseStub, "LeaseTimeToLive",
                           pb.LeaseTimeToLiveRequest(ID=lease_id), timeout_s)
        return float(resp.TTL)  # etcd answers -1 for a lease it does not have

    def revoke_lease(self, lease_id: int, timeout_s: float) -> None:
        self._keepalive.forget(lease_id)
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

    def _guarded(self, what: str, leader_key: str, fencing_token: int, ops: list[Any], timeout_s: float,
                 claim: Claim | None = None, claims: Sequence[Claim] = ()) -> int | None:
        """One transaction: `ops` only while `leader_key` still has create_revision == fencing_token (and the
        claim key its mod revision; an absent key's is 0). Returns the revision after it, or None when refused."""
        compare = [self._created_as(leader_key, fencing_token)]
        for key, revision in ([claim] if claim is not None else []) + list(claims):
            compare.append(pb.Compare(key=key.encode(), target=pb.Compare.MOD, result=pb.Compare.EQUAL,
                                      mod_revision=revision))
        resp = self._txn(what, pb.TxnRequest(compare=compare, success=ops), timeout_s)
        return int(resp.header.revision) if resp.succeeded else None

    @staticmethod
    def _put(key: str, value: bytes) -> Any:
        return pb.RequestOp(request_put=pb.PutRequest(key=key.encode(), value=value))

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
        found = [kv_of(r.kvs[0]) if r.kvs else None for r in ranges]
        leader, extra = found[0], {k: kv for k, kv in zip(also_read, found[1:]) if kv is not None}
        return CampaignResult(campaign_won(resp.succeeded, leader, lease_id), resp.header.revision, leader, extra)

    def get(self, key: str, timeout_s: float) -> tuple[KeyValue | None, int]:
        resp = self._unary(f"get {key}", pb_grpc.KVStub, "Range", pb.RangeRequest(key=key.encode()), timeout_s)
        return (kv_of(resp.kvs[0]) if resp.kvs else None), resp.header.revision

    def get_prefix(self, prefix: str, timeout_s: float) -> list[KeyValue]:
        return self.read_prefix(prefix, timeout_s)[0]

    def read_prefix(self, prefix: str, timeout_s: float) -> tuple[list[KeyValue], int]:
        start = prefix.encode()
        end = start[:-1] + bytes([start[-1] + 1])  # etcd's range_end for "every key with this prefix"
        resp = self._unary(f"get {prefix}*", pb_grpc.KVStub, "Range", pb.RangeRequest(key=start, range_end=end),
                           timeout_s)
        return [kv_of(kv) for kv in resp.kvs], int(resp.header.revision)

    def put_leased(self, key: str, value: bytes, lease_id: int, timeout_s: float) -> int:
        resp = self._unary(f"put {key}", pb_grpc.KVStub, "Put",
                           pb.PutRequest(key=key.encode(), value=value, lease=lease_id), timeout_s)
        return int(resp.header.revision)

    def claim(self, leader_key: str, fencing_token: int, claim: Claim, puts: dict[str, bytes],
              timeout_s: float) -> int | None:
        ops = [self._put(k, v) for k, v in puts.items()]
        return self._guarded(f"claim {claim[0]}", leader_key, fencing_token, ops, timeout_s, claim)

    def claim_all(self, leader_key: str, fencing_token: int, claims: list[Claim], puts: dict[str, bytes],
                  timeout_s: float) -> int | None:
        ops = [self._put(k, v) for k, v in puts.items()]
        return self._guarded(f"claim {len(claims)} runs", leader_key, fencing_token, ops, timeout_s, claims=claims)

    def get_many(self, keys: Sequence[str], timeout_s: float) -> dict[str, KeyValue]:
        """Several keys read in one transaction each of at most 100 (etcd allows 128 operations per transaction);
        all within one deadline."""
        deadline = time.monotonic() + timeout_s
        found: dict[str, KeyValue] = {}
        for start in range(0, len(keys), 100):
            chunk = keys[start:start + 100]
            reads = [pb.RequestOp(request_range=pb.RangeRequest(key=k.encode())) for k in chunk]
            resp = self._txn(f"get {len(chunk)} keys", pb.TxnRequest(success=reads), _left(deadline, "get keys"))
            for r in resp.responses:
                for kv in r.response_range.kvs:
                    value = kv_of(kv)
                    found[value.key] = value
        return found

    def guarded_put(self, leader_key: str, fencing_token: int, key: str, value: bytes, timeout_s: float,
                    claim: Claim | None = None) -> bool:
        return self._guarded(f"guarded put {key}", leader_key, fencing_token, [self._put(key, value)], timeout_s,
                             claim) is not None

    def guarded_delete(self, leader_key: str, fencing_token: int, key: str, timeout_s: float,
                       claim: Claim | None = None) -> bool:
        delete = pb.RequestOp(request_delete_range=pb.DeleteRangeRequest(key=key.encode()))
        return self._guarded(f"guarded delete {key}", leader_key, fencing_token, [delete], timeout_s,
                             claim) is not None

    def resign(self, leader_key: str, fencing_token: int, handover_key: str, handover: bytes,
               timeout_s: float, also_put: dict[str, bytes] | None = None) -> bool:
        ops = [self._put(k, v) for k, v in (also_put or {}).items()]
        ops += [self._put(handover_key, handover),
                pb.RequestOp(request_delete_range=pb.DeleteRangeRequest(key=leader_key.encode()))]
        return self._guarded(f"resign {leader_key}", leader_key, fencing_token, ops, timeout_s) is not None

    def compare_and_put(self, compares: list[Claim], puts: dict[str, bytes], timeout_s: float) -> int | None:
        compare = [pb.Compare(key=k.encode(), target=pb.Compare.MOD, result=pb.Compare.EQUAL, mod_revision=r)
                   for k, r in compares]
        resp = self._txn(f"compare and put {', '.join(puts)}", pb.TxnRequest(
            compare=compare, success=[self._put(k, v) for k, v in puts.items()]), timeout_s)
        return int(resp.header.revision) if resp.succeeded else None

    def compact(self, revision: int, timeout_s: float) -> None:
        """Drop the history before `revision` (for tests and operators; the library never compacts).
        Waits until it is physically done, so a watch started afterwards sees the result."""
        self._unary(f"compact at {revision}", pb_grpc.KVStub, "Compact",
                    pb.CompactionRequest(revision=revision, physical=True), timeout_s)

    # --- watch ---------------------------------------------------------------------------------------
    def watch(self, key: str, start_revision: int, stop: threading.Event,
              prefix: bool = False) -> Iterator[WatchEvent]:
        return watch(self, key, start_revision, stop, prefix)

    def close(self) -> None:
        self.closing = True  # watches cut by this end quietly
        self._keepalive.forget(None)
        aioloop.close_channels(self)
        with self._lock:
            channels, self._channels = list(self._channels.values()), {}
        for channel in channels:
            channel.close()
