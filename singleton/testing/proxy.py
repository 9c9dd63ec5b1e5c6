"""A TCP proxy that can be cut: while cut it *blackholes* (holds connections open, moves no bytes), as a
network partition does, rather than resetting them, which clients notice at once. `reset()` does the other
thing: it resets the connections it holds (RST to the client), as a middlebox that drops its state does, and
goes on accepting new ones."""
from __future__ import annotations

import select
import socket
import struct
import threading

from singleton.dev.embedded import free_port


class CuttableProxy:
    def __init__(self, upstream_host: str, upstream_port: int, listen_port: int | None = None) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.port = listen_port or free_port()
        self._flowing = threading.Event()
        self._flowing.set()
        self._closed = threading.Event()
        self._resets = 0  # bumped by reset(): connections made before are reset by their thread
        self._sockets: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._server = socket.create_server(("127.0.0.1", self.port), reuse_port=False)
        self._server.settimeout(0.2)
        self._thread = threading.Thread(target=self._accept_loop, daemon=True, name="proxy-accept")
        self._thread.start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def cut(self) -> None:
        """Blackhole: existing and new connections stay open but no byte moves either way."""
        self._flowing.clear()

    def reset(self) -> None:
        """Reset every connection held now (the client gets an RST; upstream sees its side closed)."""
        with self._lock:
            self._resets += 1

    def heal(self) -> None:
        self._flowing.set()

    def close(self) -> None:
        self._closed.set()
        self._flowing.set()
        self._thread.join(2)
        self._server.close()
        with self._lock:
            for sock in self._sockets:
                try:
                    sock.close()
                except OSError:
                    pass
            self._sockets.clear()

    def _accept_loop(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._server.accept()
            except (TimeoutError, OSError):
                continue
            threading.Thread(target=self._serve, args=(client,), daemon=True, name="proxy-conn").start()

    def _serve(self, client: socket.socket) -> None:
        with self._lock:
            self._sockets.add(client)
            generation = self._resets
        # A connection made while cut waits here, as a SYN into a partition would.
        while not self._flowing.wait(0.2):
            if self._closed.is_set():
                return
        try:
            upstream = socket.create_connection(self.upstream, timeout=5)
        except OSError:
            client.close()
            return
        with self._lock:
            self._sockets.add(upstream)
        pairs = {client: upstream, upstream: client}
        try:
            while not self._closed.is_set():
                if self._resets != generation:
                    # Linger 0: close() sends an RST instead of a FIN.
                    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    return
                if not self._flowing.is_set():
                    self._flowing.wait(0.2)  # hold everything: bytes stay in the kernel buffers
                    continue
                readable, _, _ = select.select(list(pairs), [], [], 0.2)
                for sock in readable:
                    data = sock.recv(65536)
                    if not self._flowing.is_set():
                        # Cut while we held this chunk (or this close): deliver it only after healing, never drop it.
                        self._flowing.wait()
                    if not data:
                        return
                    pairs[sock].sendall(data)
        except OSError:
            pass
        finally:
            for sock in (client, upstream):
                try:
                    sock.close()
                except OSError:
                    pass
            with self._lock:
                self._sockets.discard(client)
                self._sockets.discard(upstream)
