"""The one place where etcd's gRPC errors become SingletonErrors.

etcd answers with fixed (code, message) pairs (its api/v3rpc/rpctypes); we match those exactly, never
a word anywhere in the text, so a key or user name quoted in a message cannot change the class. Each
pair below was checked against a real etcd 3.5 server. Callers raise the result `from err`.
"""
from __future__ import annotations

import grpc
from grpc import StatusCode as _Code

from singleton.core.errors import (AuthError, BackendError, BackendTimeout, BackendUnavailable, LeaseNotFound,
                                   TlsError, WatchCompacted)

INVALID_AUTH_TOKEN = "etcdserver: invalid auth token"  # also what an expired simple token gets
PERMISSION_DENIED = "etcdserver: permission denied"

_EXACT: dict[tuple[_Code, str], type[BackendError]] = {
    (_Code.NOT_FOUND, "etcdserver: requested lease not found"): LeaseNotFound,
    (_Code.OUT_OF_RANGE, "etcdserver: mvcc: required revision has been compacted"): WatchCompacted,
    # Authenticate answers this for a wrong password, an unknown user and an empty name alike.
    (_Code.INVALID_ARGUMENT, "etcdserver: authentication failed, invalid user ID or password"): AuthError,
    (_Code.INVALID_ARGUMENT, "etcdserver: user name is empty"): AuthError,  # auth is on and we sent no token
    (_Code.FAILED_PRECONDITION, "etcdserver: user name not found"): AuthError,
    (_Code.UNAUTHENTICATED, INVALID_AUTH_TOKEN): AuthError,
    (_Code.PERMISSION_DENIED, PERMISSION_DENIED): AuthError,
}

# gRPC reports a failed handshake as UNAVAILABLE with OpenSSL's reason in the text: nothing better to go on.
_TLS_HINTS = (
    ("VERIFY_FAILED", "the etcd server's certificate is not signed by --cacert"),
    ("BAD_CERTIFICATE", "etcd refused our client certificate (--cert/--key missing, or not signed by its CA)"),
    ("CERTIFICATE_REQUIRED", "etcd refused our client certificate (--cert/--key missing, or not signed by its CA)"),
)
_TLS_MARKERS = ("ssl", "handshake", "certificate", "tls")


def _parts(err: grpc.RpcError) -> tuple[_Code | None, str]:
    code = err.code() if hasattr(err, "code") else None
    details = (err.details() if hasattr(err, "details") else None) or str(err)
    return code, details


def token_rejected(err: grpc.RpcError) -> bool:
    """etcd no longer knows the token we sent (expired, or invalidated by a password change): a fresh
    Authenticate may fix it, so the call is worth one retry."""
    return _parts(err) == (_Code.UNAUTHENTICATED, INVALID_AUTH_TOKEN)


def translate(err: grpc.RpcError, what: str) -> BackendError:
    code, details = _parts(err)
    message = f"{what}: {code.name.lower() if code else 'error'}: {details}"
    if code is _Code.DEADLINE_EXCEEDED:
        return BackendTimeout(message)
    if code is _Code.UNAVAILABLE:
        upper = details.upper()
        for reason, hint in _TLS_HINTS:
            if reason in upper:
                return TlsError(f"{hint}; {message}")
        if any(marker in details.lower() for marker in _TLS_MARKERS):
            return TlsError(f"TLS handshake failed; {message}")
        return BackendUnavailable(message)
    if code is not None:
        exact = _EXACT.get((code, details))
        if exact is not None:
            return exact(message)
        if code in (_Code.UNAUTHENTICATED, _Code.PERMISSION_DENIED):
            return AuthError(message)  # the status code alone says so, whatever the text
    return BackendError(message)
