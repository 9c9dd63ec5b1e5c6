"""A real etcd with auth enabled, reached through a proxy that delays every answer: one deadline covers a
whole call, authenticating (or re-authenticating after etcd dropped our token) included."""
from __future__ import annotations

import os
import queue
import select
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import grpc
import pytest

from singleton.backends.etcd import EtcdBackend
from singleton.core.config import Endpoint
from singleton.core.errors import BackendTimeout
from singleton.core.security import Credentials
from singleton.dev.embedded import EtcdCluster, etcd_binary

DEADLINE_S = 1.0
# Where the property is that a call succeeds (a dropped token replaced inside it), not how fast: etcd checks a
# password with bcrypt, which a busy machine may take most of a second over.
CALL_S = 5.0
PASSWORD = "app-pw"


class DelayingProxy:
    """Passes bytes both ways, delivering each chunk from the server `delay_s` after it arrived (in
    order), as a slow link would; requests go through at once."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream, self.delay_s = upstream, 0.0
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = self._server.getsockname()[1]
        self._closed = threading.Event()
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        self._server.settimeout(0.2)
        while not self._closed.is_set():
            try:
                client, _ = self._server.accept()
            except OSError:
                continue
            try:
                upstream = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                client.close()
                continue
            self._sockets += [client, upstream]
            late: queue.Queue[tuple[float, bytes]] = queue.Queue()
            threading.Thread(target=self._pump, args=(client, upstream, late), daemon=True).start()
            threading.Thread(target=self._deliver, args=(late, client), daemon=True).start()

    def _pump(self, client: socket.socket, upstream: socket.socket, late: queue.Queue[tuple[float, bytes]]) -> None:
        try:
            while not self._closed.is_set():
                for sock in select.select([client, upstream], [], [], 0.2)[0]:
                    data = sock.recv(65536)
                    if not data:
                        return
                    if sock is client:
                        upstream.sendall(data)
                    else:
                        late.put((time.monotonic() + self.delay_s, data))
        except OSError:
            pass

    def _deliver(self, late: queue.Queue[tuple[float, bytes]], client: socket.socket) -> None:
        try:
            while not self._closed.is_set():
                try:
                    due, data = late.get(timeout=0.2)
                except queue.Empty:
                    continue
                self._closed.wait(max(0.0, due - time.monotonic()))
                client.sendall(data)
        except OSError:
            pass

    def close(self) -> None:
        self._closed.set()
        self._server.close()
        for sock in self._sockets:
            sock.close()


@dataclass
class AuthEtcd:
    cluster: EtcdCluster
    proxy: DelayingProxy

    def backend(self) -> EtcdBackend:
        creds = Credentials(user="app", password=PASSWORD)
        return EtcdBackend([Endpoint("127.0.0.1", self.proxy.port)], credentials=creds)

    def invalidate_tokens(self) -> None:
        """etcd forgets every token of a user whose password is set (even to the same one)."""
        subprocess.run([etcd_binary("etcdctl"), f"--endpoints={self.cluster.endpoints_arg}", "--user", "root:root-pw",
                        "user", "passwd", "app", "--interactive=false"], input=PASSWORD + "\n", text=True,
                       capture_output=True, timeout=10, check=True, env={**os.environ, "ETCDCTL_API": "3"})


@pytest.fixture(scope="module")
def auth_etcd() -> Iterator[AuthEtcd]:
    with EtcdCluster(1) as cluster:
        for cmd in (["user", "add", "root", "--new-user-password", "root-pw"], ["user", "grant-role", "root", "root"],
                    ["role", "add", "rw"], ["role", "grant-permission", "rw", "readwrite", "/t/", "--prefix=true"],
                    ["user", "add", "app", "--new-user-password", PASSWORD], ["user", "grant-role", "app", "rw"],
                    ["auth", "enable"]):
            cluster.etcdctl(*cmd)
        proxy = DelayingProxy(("127.0.0.1", cluster.members[0].client_port))
        try:
            yield AuthEtcd(cluster, proxy)
        finally:
            proxy.close()


@pytest.fixture
def delayed(auth_etcd: AuthEtcd) -> Iterator[DelayingProxy]:
    yield auth_etcd.proxy
    auth_etcd.proxy.delay_s = 0.0


def timed_get(backend: EtcdBackend, key: str) -> float:
    started = time.monotonic()
    with pytest.raises(BackendTimeout):
        backend.get(key, DEADLINE_S)
    return time.monotonic() - started


def test_the_first_authenticate_counts_against_the_call_deadline(auth_etcd: AuthEtcd, delayed: DelayingProxy,
                                                                 name: str) -> None:
    backend = auth_etcd.backend()
    try:
        grpc.channel_ready_future(backend._channel(0)).result(timeout=5)  # connected, no token yet
        delayed.delay_s = 0.6  # Authenticate, then the read: two answers, 1.2 s > the deadline
        assert timed_get(backend, f"/t/{name}") < 1.5 * DEADLINE_S
    finally:
        backend.close()


def test_authenticating_again_counts_against_the_call_deadline(auth_etcd: AuthEtcd, delayed: DelayingProxy,
                                                               name: str) -> None:
    backend = auth_etcd.backend()
    try:
        backend.get(f"/t/{name}", DEADLINE_S)  # connected, with a token
        auth_etcd.invalidate_tokens()
        delayed.delay_s = 0.35  # refusal, Authenticate, the read again: 1.05 s > the deadline
        assert timed_get(backend, f"/t/{name}") < 1.5 * DEADLINE_S
    finally:
        backend.close()


def test_a_token_etcd_dropped_is_replaced_within_the_call(auth_etcd: AuthEtcd, name: str) -> None:
    backend, writer = auth_etcd.backend(), auth_etcd.backend()
    try:
        lease = writer.grant_lease(10, CALL_S)
        assert backend.get(f"/t/{name}", CALL_S)[0] is None
        auth_etcd.invalidate_tokens()
        assert writer.campaign(f"/t/{name}", b"x", lease.lease_id, CALL_S).won
        assert backend.get(f"/t/{name}", CALL_S)[0] is not None
        writer.revoke_lease(lease.lease_id, CALL_S)
    finally:
        backend.close()
        writer.close()


def test_a_watch_restarted_with_a_dropped_token_authenticates_again(auth_etcd: AuthEtcd, name: str) -> None:
    key = f"/t/{name}/leader"
    watcher, writer = auth_etcd.backend(), auth_etcd.backend()
    stop, seen = threading.Event(), threading.Event()
    try:
        _, revision = watcher.get(key, CALL_S)
        auth_etcd.invalidate_tokens()  # etcd cancels a watch created with it ("permission denied")

        def watch() -> None:
            for event in watcher.watch(key, revision + 1, stop):
                seen.set()
                return

        thread = threading.Thread(target=watch, daemon=True)
        thread.start()
        lease = writer.grant_lease(10, CALL_S)
        writer.campaign(key, b"x", lease.lease_id, CALL_S)
        assert seen.wait(5.0), "the watch never re-authenticated"
        writer.revoke_lease(lease.lease_id, CALL_S)
    finally:
        stop.set()
        watcher.close()
        writer.close()
