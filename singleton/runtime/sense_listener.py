"""Fast failover, the leader's side: a listener every replica runs for as long as it runs (its address and nonce go
into the leader record). It greets each standby that connects and then keeps the connection open, asleep in
select(): the kernel closing these sockets when the process dies is the whole signal (runtime/sensing.py)."""
from __future__ import annotations

import os
import secrets
import selectors
import socket
import threading

GREETING = b"singleton-sense/1 "
CONNECT_TIMEOUT_S = 1.0  # a connect or greeting slower than this is "timeout", never death
_WILDCARDS = ("", "0.0.0.0", "::")


def greeting(nonce: str) -> bytes:
    return GREETING + nonce.encode() + b"\n"


def keepalive(sock: socket.socket) -> None:
    """A half-open connection (the peer's host vanished) ends after ~20 s instead of never."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for name, value in (("TCP_KEEPIDLE", 10), ("TCP_KEEPINTVL", 3), ("TCP_KEEPCNT", 3)):
        if hasattr(socket, name):
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, name), value)


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
            keepalive(conn)  # a standby whose host vanished does not hold its socket here for ever
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
