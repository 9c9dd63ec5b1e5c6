"""etcd's errors become SingletonErrors by exact (code, message), never by a word somewhere in the text.

Pure logic on small fake RpcErrors; the messages are etcd 3.5's own (api/v3rpc/rpctypes), each seen
from a real server."""
from __future__ import annotations

import grpc
import pytest

from singleton.backends.etcd import EtcdBackend
from singleton.backends.etcd.errors import token_rejected, translate
from singleton.core.config import Endpoint
from singleton.core.errors import (AuthError, BackendError, BackendTimeout, BackendUnavailable, LeaseNotFound,
                                   TlsError, WatchCompacted)

C = grpc.StatusCode


class FakeRpcError(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


@pytest.mark.parametrize("code, details, expected", [
    (C.NOT_FOUND, "etcdserver: requested lease not found", LeaseNotFound),
    (C.OUT_OF_RANGE, "etcdserver: mvcc: required revision has been compacted", WatchCompacted),
    (C.INVALID_ARGUMENT, "etcdserver: authentication failed, invalid user ID or password", AuthError),
    (C.INVALID_ARGUMENT, "etcdserver: user name is empty", AuthError),
    (C.FAILED_PRECONDITION, "etcdserver: user name not found", AuthError),
    (C.UNAUTHENTICATED, "etcdserver: invalid auth token", AuthError),  # also an expired token
    (C.PERMISSION_DENIED, "etcdserver: permission denied", AuthError),
    (C.DEADLINE_EXCEEDED, "Deadline Exceeded", BackendTimeout),
    (C.UNAVAILABLE, "etcdserver: no leader", BackendUnavailable),
    (C.UNAVAILABLE, "failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:2379: "
                    "Failed to connect to remote host: Connection refused", BackendUnavailable),
    (C.OUT_OF_RANGE, "etcdserver: mvcc: required revision is a future revision", BackendError),
    (C.FAILED_PRECONDITION, "etcdserver: authentication is not enabled", BackendError),
])
def test_each_etcd_error_maps_to_its_class(code: grpc.StatusCode, details: str, expected: type) -> None:
    err = translate(FakeRpcError(code, details), "get /k")
    assert type(err) is expected
    assert str(err) == f"get /k: {code.name.lower()}: {details}"


@pytest.mark.parametrize("code, details", [
    # A key, user or lease named in a message does not make it an auth, compaction or lease error.
    (C.INVALID_ARGUMENT, "etcdserver: duplicate key given in txn request /user/compacted"),
    (C.INVALID_ARGUMENT, "authentication failed for /user/x"),
    (C.FAILED_PRECONDITION, "etcdserver: user name not found /user/x"),
    (C.OUT_OF_RANGE, "key /user/compacted out of range"),
    (C.UNKNOWN, "etcdserver: mvcc: required revision has been compacted"),  # right text, wrong code
    (C.NOT_FOUND, "etcdserver: member not found"),
    (C.NOT_FOUND, "key /lease/compacted not found"),
    (C.INTERNAL, "etcdserver: requested lease not found"),
])
def test_a_look_alike_message_stays_a_plain_backend_error(code: grpc.StatusCode, details: str) -> None:
    assert type(translate(FakeRpcError(code, details), "txn")) is BackendError


TLS_FAILED = "failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:2379: " \
             "Tls handshake failed (TSI_PROTOCOL_FAILURE): SSL_ERROR_SSL: error:{}:SSL routines:OPENSSL_internal:{}"


@pytest.mark.parametrize("details, hint", [  # as grpcio 1.85 reports them (seen in tests/test_tls_auth.py)
    (TLS_FAILED.format("1000007d", "CERTIFICATE_VERIFY_FAILED: unable to get local issuer certificate"),
     "not signed by --cacert"),
    (TLS_FAILED.format("10000412", "SSLV3_ALERT_BAD_CERTIFICATE"), "refused our client certificate"),
    (TLS_FAILED.format("1000045c", "TLSV13_ALERT_CERTIFICATE_REQUIRED"), "refused our client certificate"),
    (TLS_FAILED.format("100000f7", "WRONG_VERSION_NUMBER"), "TLS handshake failed"),
])
def test_a_failed_handshake_is_a_tls_error_with_a_hint(details: str, hint: str) -> None:
    err = translate(FakeRpcError(C.UNAVAILABLE, details), "get /k")
    assert isinstance(err, TlsError) and hint in str(err)


def test_any_unauthenticated_or_permission_denied_code_is_an_auth_error() -> None:
    assert type(translate(FakeRpcError(C.PERMISSION_DENIED, "denied by a proxy"), "put")) is AuthError
    assert type(translate(FakeRpcError(C.UNAUTHENTICATED, "no credentials"), "put")) is AuthError


def test_only_an_invalid_token_is_worth_authenticating_again() -> None:
    assert token_rejected(FakeRpcError(C.UNAUTHENTICATED, "etcdserver: invalid auth token"))
    assert not token_rejected(FakeRpcError(C.PERMISSION_DENIED, "etcdserver: permission denied"))
    assert not token_rejected(FakeRpcError(C.INVALID_ARGUMENT,
                                           "etcdserver: authentication failed, invalid user ID or password"))


@pytest.mark.parametrize("code, expected", [(C.NOT_FOUND, LeaseNotFound), (C.UNAVAILABLE, BackendUnavailable)])
def test_a_call_raises_the_translation_with_the_client_error_as_cause(code: grpc.StatusCode, expected: type) -> None:
    backend = EtcdBackend([Endpoint("127.0.0.1", 1)])
    cause = FakeRpcError(code, "etcdserver: requested lease not found")

    def invoke(channel: grpc.Channel, remaining_s: float, metadata: list[tuple[str, str]]) -> None:
        raise cause

    try:
        with pytest.raises(expected) as raised:
            backend._call("revoke lease 1", invoke, 1.0)
        assert raised.value.__cause__ is cause
    finally:
        backend.close()
