"""Logging a failure that repeats (etcd down for minutes, retried every couple of seconds): the first one in full,
then at most one summary line per `every_s` with the count and the last error, then one line when it recovers."""
from __future__ import annotations

import logging
import time
from collections.abc import Callable

from singleton.core.errors import BackendTimeout, TlsError


def brief(err: BaseException) -> str:
    """`grant lease: Connection refused`, not gRPC's 200-character chain: the call, then the end of the chain
    (or our own hint, for TLS)."""
    text = str(err)
    if isinstance(err, TlsError):
        return text.split(";", 1)[0]
    what = text.split(": ", 1)[0].split(" (", 1)[0].strip()
    cause = "timed out" if isinstance(err, BackendTimeout) else text.rsplit(": ", 1)[-1].strip()
    cause = cause[:100] or type(err).__name__
    return f"{what}: {cause}" if what and what != cause else cause


class RepeatedFailures:
    """`failed()` on every failure, `recovered()` on the next success. A failure more than `every_s` after the
    previous one starts a new run of failures (and is logged in full again)."""

    def __init__(self, log: logging.Logger, what: str, every_s: float = 30.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._log, self._what, self._every_s, self._clock = log, what, every_s, clock
        self._first_at: float | None = None  # start of the current run of failures
        self._last_at = 0.0
        self._logged_at = 0.0
        self._count = 0  # failures in the current run
        self._unlogged = 0  # failures since the last line

    def failed(self, err: BaseException, next_try_s: float | None = None) -> None:
        now = self._clock()
        if self._first_at is not None and now - self._last_at > self._every_s:
            self._first_at = None  # long quiet since the last failure: a new run
        self._last_at = now
        then = "" if next_try_s is None else f"; retrying in {next_try_s:.1f} s"
        if self._first_at is None:
            self._first_at, self._logged_at, self._count, self._unlogged = now, now, 1, 0
            self._log.warning("%s (%s)%s", self._what, brief(err), then)
            return
        self._count += 1
        self._unlogged += 1
        if now - self._logged_at >= self._every_s:
            self._log.warning("%s: still failing, %d tries in the last %.0f s (%d since the first, %.0f s ago); "
                              "last: %s%s", self._what, self._unlogged, now - self._logged_at, self._count,
                              now - self._first_at, brief(err), then)
            self._logged_at, self._unlogged = now, 0

    def recovered(self) -> None:
        if self._first_at is None:
            return
        self._log.info("%s: fine again after %d failed tries over %.1f s", self._what, self._count,
                       self._clock() - self._first_at)
        self._first_at = None

    @property
    def failing(self) -> bool:
        return self._first_at is not None
