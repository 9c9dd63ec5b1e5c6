"""Fast failover, a standby's side: one connection to the leader's sensing listener (runtime/sense_listener.py), in
a thread asleep in a blocking recv() (no byte moves after the greeting); core/sensing.py decides what its end
means. Only a connection lost to a timeout or an unreachable host is retried on a timer (with back-off)."""
from __future__ import annotations

import errno
import logging
import socket
import threading
from typing import Any

from singleton.backends.abc import Backend
from singleton.core.clock import Clock
from singleton.core.errors import BackendError
from singleton.core.sensing import Action, DeathSense, Outcome, State
from singleton.runtime.sense_listener import CONNECT_TIMEOUT_S, greeting, keepalive, split_address

log = logging.getLogger("singleton")


def _classify(err: OSError) -> Outcome:
    if isinstance(err, ConnectionRefusedError):
        return Outcome.REFUSED
    if isinstance(err, ConnectionResetError):
        return Outcome.RESET
    if isinstance(err, TimeoutError) or err.errno == errno.ETIMEDOUT:
        return Outcome.TIMEOUT
    return Outcome.UNREACHABLE  # EHOSTUNREACH, ENETUNREACH, and anything else we cannot read a death into


class Sensor:
    """A standby's sensing of one leader term, in its own thread; on a death it revokes that term's lease (which
    deletes the leader key: every standby's watch sees it and the normal campaign runs). Revoking a lease that is
    already gone is harmless, so several standbys may do it."""

    def __init__(self, address: str, nonce: str, lease_id: int, backend: Backend, clock: Clock,
                 call_timeout_s: float, leader: str, leader_key: str, turn_s: float = 0.0) -> None:
        self.host, self.port = split_address(address)
        self.nonce, self.lease_id, self.leader, self.leader_key = nonce, lease_id, leader, leader_key
        self.backend, self.call_timeout_s = backend, call_timeout_s
        self.sense = DeathSense(clock)
        self.turn_s = turn_s  # our turn among the standbys (core/stagger.py): the first revokes, the rest see it
        self.dead = threading.Event()  # we sensed the death (our revoke waits its turn)
        self.revoking = threading.Event()  # we sent the revoke: our campaign need not wait its turn again
        self.revoked = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        # The address that last greeted us as (family, sockaddr): a probe dials exactly it, never the name again.
        self._verified: tuple[int, tuple[Any, ...]] | None = None
        self._said_unreachable = False
        self._thread = threading.Thread(target=self._run, daemon=True, name="singleton-sensor")

    def start(self) -> Sensor:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Never blocks: the thread's blocking read ends when its socket is shut down."""
        self._stop.set()
        with self._lock:
            if self._sock is not None:
                try:
                    self._sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def join(self, timeout_s: float) -> None:
        self._thread.join(timeout_s)

    def _run(self) -> None:
        step = self.sense.start()
        try:
            while not self._stop.is_set():
                if step.action is Action.CONNECT:
                    if step.delay_s and self._stop.wait(step.delay_s):
                        return
                    probing = self.sense.state is State.PROBING
                    outcome = self._connect()
                    step = self.sense.connected(outcome)
                    if not probing and self.sense.state is State.CONNECTED:
                        log.info("sensing leader %s at %s:%d", self.leader, self.host, self.port)
                    elif probing and self.sense.state is State.CONNECTING:
                        log.info("leader %s is not known dead: its sensing port answered %s", self.leader,
                                 outcome.value)
                    elif self.sense.state is State.CONNECTING and not self._said_unreachable:
                        self._said_unreachable = True  # once per term: a crash of this leader costs its lease
                        log.info("cannot sense leader %s at %s:%d (%s); retrying with back-off, a crash of it "
                                 "costs its lease meanwhile", self.leader, self.host, self.port, outcome.value)
                elif step.action is Action.RECV:
                    outcome = self._recv()
                    if self._stop.is_set():
                        return
                    step = self.sense.closed(outcome)
                    log.info("sensing connection to leader %s ended (%s): %s", self.leader, outcome.value,
                             "probing" if step.action is Action.CONNECT and not step.delay_s else "reconnecting")
                else:
                    self._revoke()
                    return
        finally:
            self._set_sock(None)

    def _set_sock(self, sock: socket.socket | None) -> None:
        with self._lock:
            old, self._sock = self._sock, sock
        if old is not None:
            old.close()
        if sock is not None and self._stop.is_set():
            sock.shutdown(socket.SHUT_RDWR)  # stopped while we were connecting

    def _connect(self) -> Outcome:
        try:
            if self.sense.state is State.PROBING and self._verified is not None:
                # Only a refusal from the very address that greeted us is one from the leader's host: a name
                # resolved again may lead elsewhere (its DNS moved, or it has several addresses and one of them
                # refuses while the leader's is cut off), and that refusal says nothing about the leader.
                family, sockaddr = self._verified
                sock = socket.socket(family, socket.SOCK_STREAM)
                try:
                    sock.settimeout(CONNECT_TIMEOUT_S)
                    sock.connect(sockaddr)
                except OSError:
                    sock.close()
                    raise
            else:
                sock = socket.create_connection((self.host, self.port), timeout=CONNECT_TIMEOUT_S)
        except OSError as err:
            return _classify(err)
        self._set_sock(sock)
        expected = greeting(self.nonce)
        try:
            data = b""
            while len(data) < len(expected) and not data.endswith(b"\n"):
                chunk = sock.recv(len(expected) - len(data))
                if not chunk:
                    return Outcome.EOF
                data += chunk
        except OSError as err:
            return _classify(err)
        if data != expected:
            return Outcome.STRANGER
        self._verified = (sock.family, sock.getpeername())
        sock.settimeout(None)  # from now on: asleep in recv() until the connection ends
        keepalive(sock)
        return Outcome.GREETED

    def _recv(self) -> Outcome:
        sock = self._sock
        if sock is None:
            return Outcome.EOF
        try:
            while sock.recv(1024):
                pass  # the leader sends nothing after the greeting; ignore whatever comes
        except OSError as err:
            return _classify(err)
        return Outcome.EOF

    def _still_holds_the_key(self) -> bool:
        """A graceful stop hands over before its listener closes: then the key is already vacant (or someone
        else's), and there is nothing to revoke or warn about."""
        try:
            kv, _ = self.backend.get(self.leader_key, self.call_timeout_s)
        except BackendError:
            return True  # cannot tell: revoking a lease that is gone is harmless
        return kv is not None and kv.lease_id == self.lease_id

    def _revoke(self) -> None:
        # Every standby senses the death at once; waiting our turn, the first one's revoke deletes the key and our
        # campaigner stops us (stop()) before we read or revoke: O(1) etcd requests per death, not one per standby.
        self.dead.set()
        if self.turn_s > 0 and self._stop.wait(self.turn_s):
            return
        if not self._still_holds_the_key():
            log.info("leader %s has gone, and no longer holds %s", self.leader, self.leader_key)
            return
        log.warning("leader %s is dead (its sensing connection closed and %s:%d refuses connections): revoking its "
                    "lease %x", self.leader, self.host, self.port, self.lease_id)
        for attempt in range(3):
            if self._stop.is_set():
                return
            try:
                self.revoking.set()
                self.backend.revoke_lease(self.lease_id, self.call_timeout_s)
                self.revoked.set()
                return
            except BackendError as err:
                log.warning("could not revoke the dead leader's lease %x (try %d of 3; else it lapses by itself): "
                            "%s", self.lease_id, attempt + 1, err)
