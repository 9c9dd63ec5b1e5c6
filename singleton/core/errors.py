"""One exception hierarchy: everything this package raises on purpose is a SingletonError."""
from __future__ import annotations


class SingletonError(Exception):
    """Base of every error raised by singleton."""


class ConfigError(SingletonError):
    """Invalid configuration; found before anything touches etcd."""


class IllegalTransition(SingletonError):
    """The election state machine was sent an event its current state does not accept."""


class BackendError(SingletonError):
    """A call to the coordination backend (etcd) failed. The client's error is kept as __cause__."""


class BackendUnavailable(BackendError):
    """No endpoint answered (refused, reset, no quorum): usually transient."""


class BackendTimeout(BackendError):
    """A call ran past its deadline: the member may be hung or cut off."""


class LeaseNotFound(BackendError):
    """The lease is gone at etcd (expired or revoked)."""


class AuthError(BackendError):
    """Credentials were refused (bad password, bad certificate, missing permission)."""


class TlsError(AuthError):
    """The TLS handshake failed: an unknown CA, a rejected or missing client certificate."""


class WatchCompacted(BackendError):
    """A watch asked for history that etcd has compacted away; restart from a fresh read."""
