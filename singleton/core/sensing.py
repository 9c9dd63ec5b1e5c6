"""Sensing a leader's death from a standby: the decision, free of sockets and threads (runtime/sensing.py does
the I/O and feeds this machine what each socket operation ended with).

A process that dies has its sockets closed by its kernel at once, and a port nothing listens on any more refuses
connections. So: the standby holds one connection to the leader's sensing listener. When that connection ends
with EOF or a reset *and* a reconnect made at once is refused, the process is gone. Everything else -- a timeout,
an unreachable host, a reconnect that is accepted (a proxy reset the connection, the leader lives), a refusal
without a verified connection lost just before -- proves nothing, and leaves the lease to decide, as without
sensing.

    CONNECTING --greeted--> CONNECTED --eof/reset--> PROBING --refused (within the probe window)--> DEAD
    CONNECTING --anything else--> CONNECTING (after a back-off)
    CONNECTED  --timeout/unreachable/flapping--> CONNECTING
    PROBING    --eof/reset before the greeting--> PROBING (again, within the probe window)
    PROBING    --greeted--> CONNECTED;  --anything else--> CONNECTING
"""
from __future__ import annotations

import enum
from dataclasses import dataclass

from singleton.core.clock import Clock


class Outcome(enum.Enum):
    """What one socket operation (connect + greeting, or the blocking read) ended with."""

    GREETED = "greeted"  # connected, and the greeting named the leader we sense
    STRANGER = "stranger"  # connected, but something else answered (a reused port, another service)
    EOF = "eof"
    RESET = "reset"
    REFUSED = "refused"
    TIMEOUT = "timeout"
    UNREACHABLE = "unreachable"


class State(enum.Enum):
    CONNECTING = "connecting"
    CONNECTED = "connected"
    PROBING = "probing"
    DEAD = "dead"


class Action(enum.Enum):
    CONNECT = "connect"  # connect (after `delay_s`) and read the greeting
    RECV = "recv"  # block on the connection until it ends
    REVOKE = "revoke"  # the leader is dead: revoke its lease


@dataclass(frozen=True)
class Step:
    action: Action
    delay_s: float = 0.0


class DeathSense:
    """One standby's view of one leader term. `start()`, then feed each operation's outcome to `connected` or
    `closed`; each returns what to do next."""

    def __init__(self, clock: Clock, *, probe_window_s: float = 1.0, backoff_min_s: float = 0.2,
                 backoff_max_s: float = 2.0, stable_s: float = 2.0, max_flaps: int = 3,
                 retry_probe_s: float = 0.02) -> None:
        self.clock = clock
        self.probe_window_s = probe_window_s  # a refusal later than this after the close is not "at once"
        self.backoff_min_s, self.backoff_max_s = backoff_min_s, backoff_max_s
        self.stable_s, self.max_flaps, self.retry_probe_s = stable_s, max_flaps, retry_probe_s
        self.state = State.CONNECTING
        self._failures = 0  # connects in a row that did not reach the leader: for the back-off
        self._flaps = 0  # verified connections in a row that ended within stable_s
        self._closed_at = 0.0
        self._connected_at = 0.0

    def start(self) -> Step:
        return Step(Action.CONNECT)

    def _backoff(self) -> Step:
        self.state = State.CONNECTING
        self._failures += 1
        return Step(Action.CONNECT, min(self.backoff_max_s, self.backoff_min_s * 2 ** (self._failures - 1)))

    def connected(self, outcome: Outcome) -> Step:
        """The outcome of a connect (in CONNECTING or PROBING)."""
        if self.state not in (State.CONNECTING, State.PROBING):
            raise ValueError(f"no connect is under way in state {self.state.value}")
        if outcome is Outcome.GREETED:
            self.state, self._failures, self._connected_at = State.CONNECTED, 0, self.clock.monotonic()
            return Step(Action.RECV)
        if self.state is State.PROBING and self.clock.monotonic() - self._closed_at <= self.probe_window_s:
            if outcome is Outcome.REFUSED:
                self.state = State.DEAD
                return Step(Action.REVOKE)
            if outcome in (Outcome.EOF, Outcome.RESET):
                # Accepted, then closed unanswered: a dying process's kernel may close its connections before its
                # listening socket (which then resets what it had queued). Ask again, within the window.
                return Step(Action.CONNECT, self.retry_probe_s)
        return self._backoff()

    def closed(self, outcome: Outcome) -> Step:
        """How the verified connection ended (in CONNECTED)."""
        if self.state is not State.CONNECTED:
            raise ValueError(f"no connection is held in state {self.state.value}")
        now = self.clock.monotonic()
        self._flaps = self._flaps + 1 if now - self._connected_at < self.stable_s else 0
        if outcome in (Outcome.EOF, Outcome.RESET) and self._flaps < self.max_flaps:
            self.state, self._closed_at = State.PROBING, now
            return Step(Action.CONNECT)  # the probe: at once
        # A timeout or unreachable host is a partition, not a death; a connection that keeps dropping is
        # something in between (a proxy) that we stop reading anything into for a while.
        self._flaps = 0
        return self._backoff()
