"""Fast failover's I/O: the sensing listener every replica runs (its address goes into the leader record), and
the standby's one connection to the leader's listener (core/sensing.py decides what its end means).

Both sides sleep in the kernel: the listener in select() on its sockets, the standby in a blocking recv() on a
connection over which no byte ever moves after the greeting. Only a connection that was lost to a timeout or an
unreachable host is retried on a timer (with back-off, until it is back)."""
from __future__ import annotations

import errno
import logging
import os
import secrets
import selectors
import socket
import threading

from singleton.backends.abc import Backend
from singleton.core.clock import Clock
from singleton.core.errors import BackendError
from singleton.core.sensing import Action, DeathSense, Outcome, State

log = logging.getLogger("singleton")

GREETING = b"singleton-sense/1 "
CONNECT_TIMEOUT_S = 1.0  # a connect or greeting slower than this is "timeout", never death
_WILDCARDS = ("", "0.0.0.0", "::")


def greeting(nonce: str) -> bytes:
    return GREETING + nonce.encode() + b"\n"


def advertised_host(sense_host: str, advertise_host: str) -> str:
    """The host standbys dial: the one given, else $POD_IP (Kubernetes' downward API), else the bound host unless
    it is a wildcard, else this host's name resolved (127.0.0.1 when it resolves to nothing)."""
    if advertise_host:
        return advertise_host
    if os.environ.get("POD_IP"):
        return os.environ["POD_IP"]
    if sense_host not in _WILDCARDS:
        return sense_host
    try:
        return socket.gethostbyname(socket.gethostname())
    except OSError:
        return "127.0.0.1"


def split_address(address: str) -> tuple[str, int]:
    """`host:port` or `[v6]:port`; ValueError when it is neither."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"bad sensing address {address!r}")
    return host.strip("[]"), int(port)


class SenseListener:
    """Accepts standbys' connections, greets each with our nonce, and keeps them open for as long as this process
    runs: the kernel closing them is the signal. Connections a standby ends are closed here too."""

    def __init__(self, host: str, port: int, advertise_host: str) -> None:
        self.nonce = secrets.token_hex(8)
        self._server = socket.create_server((host, port), family=socket.AF_INET6 if ":" in host else socket.AF_INET)
        self._server.setblocking(False)
        self.port = self._server.getsockname()[1]
        advertised = advertised_host(host, advertise_host)
        self.address = f"[{advertised}]:{self.port}" if ":" in advertised else f"{advertised}:{self.port}"
        self._wake_r, self._wake_w = socket.socketpair()
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._server, selectors.EVENT_READ, "accept")
        self._selector.register(self._wake_r, selectors.EVENT_READ, "wake")
        self._closed = False
        self.accepted = 0  # connections accepted so far (for tests and debugging)
        self._thread = threading.Thread(target=self._serve, daemon=True, name="singleton-sense-listener")

    def start(self) -> SenseListener:
        self._thread.start()
        return self

    def _serve(self) -> None:
        while not self._closed:
            for key, _ in self._selector.select():
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                if key.data == "wake":
                    return
                if key.data == "accept":
                    self._accept()
                else:
                    self._drain(sock)

    def _accept(self) -> None:
        try:
            conn, _ = self._server.accept()
        except OSError:
            return
        try:
            conn.setblocking(True)
            conn.settimeout(CONNECT_TIMEOUT_S)
            conn.sendall(greeting(self.nonce))
            conn.setblocking(False)
            self._selector.register(conn, selectors.EVENT_READ, "conn")
            self.accepted += 1
        except OSError:
            conn.close()

    def _drain(self, conn: socket.socket) -> None:
        try:
            data = conn.recv(1024)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:  # the standby went away (or stopped sensing us)
            self._selector.unregister(conn)
            conn.close()

    def close(self) -> None:
        """Only when the replica stops (after its handover): closing earlier would look like a death."""
        self._closed = True
        self._wake_w.send(b"x")
        if self._thread.is_alive():
            self._thread.join(2.0)
        for key in list(self._selector.get_map().values()):
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            sock.close()
        self._selector.close()
        self._wake_w.close()


def _classify(err: OSError) -> Outcome:
    if isinstance(err, ConnectionRefusedError):
        return Outcome.REFUSED
    if isinstance(err, ConnectionResetError):
        return Outcome.RESET
    if isinstance(err, TimeoutError) or err.errno == errno.ETIMEDOUT:
        return Outcome.TIMEOUT
    return Outcome.UNREACHABLE  # EHOSTUNREACH, ENETUNREACH, and anything else we cannot read a death into


def _keepalive(sock: socket.socket) -> None:
    """A half-open connection (the leader's host vanished) ends as a timeout after ~20 s instead of never."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for name, value in (("TCP_KEEPIDLE", 10), ("TCP_KEEPINTVL", 3), ("TCP_KEEPCNT", 3)):
        if hasattr(socket, name):
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, name), value)


class Sensor:
    """A standby's sensing of one leader term, in its own thread; on a death it revokes that term's lease (which
    deletes the leader key: every standby's watch sees it and the normal campaign runs). Revoking a lease that is
    already gone is harmless, so several standbys may do it."""

    def __init__(self, address: str, nonce: str, lease_id: int, backend: Backend, clock: Clock,
                 call_timeout_s: float, leader: str, leader_key: str) -> None:
        self.host, self.port = split_address(address)
        self.nonce, self.lease_id, self.leader, self.leader_key = nonce, lease_id, leader, leader_key
        self.backend, self.call_timeout_s = backend, call_timeout_s
        self.sense = DeathSense(clock)
        self.revoked = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
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
                    if probing and self.sense.state is State.CONNECTING:
                        log.info("leader %s is not known dead: its sensing port answered %s", self.leader,
                                 outcome.value)
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
        sock.settimeout(None)  # from now on: asleep in recv() until the connection ends
        _keepalive(sock)
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
        if not self._still_holds_the_key():
            log.info("leader %s has gone, and no longer holds %s", self.leader, self.leader_key)
            return
        log.warning("leader %s is dead (its sensing connection closed and %s:%d refuses connections): revoking its "
                    "lease %x", self.leader, self.host, self.port, self.lease_id)
        for attempt in range(3):
            if self._stop.is_set():
                return
            try:
                self.backend.revoke_lease(self.lease_id, self.call_timeout_s)
                self.revoked.set()
                return
            except BackendError as err:
                log.warning("could not revoke the dead leader's lease %x (try %d of 3; else it lapses by itself): "
                            "%s", self.lease_id, attempt + 1, err)
