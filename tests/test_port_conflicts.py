"""A second replica on a host whose port is taken stops at once: one line naming the address and the remedy,
exit 2, and not one connection to etcd (the ports are bound before anything else)."""
from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator

import pytest

# Another process holding a port: a plain listener, or a gRPC server with gRPC's default SO_REUSEPORT
# (what another replica's admin API was), which a server that also sets SO_REUSEPORT could share silently.
HOLDERS = {
    "socket": "import socket,sys\n"
              "s=socket.socket(); s.bind(('127.0.0.1',0)); s.listen()\n"
              "print(s.getsockname()[1], flush=True); sys.stdin.read()\n",
    "grpc": "import grpc,sys\nfrom concurrent import futures\n"
            "s=grpc.server(futures.ThreadPoolExecutor(1)); p=s.add_insecure_port('127.0.0.1:0'); s.start()\n"
            "print(p, flush=True); sys.stdin.read()\n",
}


@pytest.fixture(params=sorted(HOLDERS))
def held_port(request: pytest.FixtureRequest) -> Iterator[int]:
    holder = subprocess.Popen([sys.executable, "-c", HOLDERS[request.param]], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        line = holder.stdout.readline() if holder.stdout else ""  # EOF if it died: bounded by its life
        assert line.strip().isdigit(), f"the port holder did not start: {line!r}"
        yield int(line)
    finally:
        holder.kill()
        holder.wait(5)


@pytest.fixture
def fake_etcd() -> Iterator[socket.socket]:
    """A listener standing in for etcd: the kernel queues any connection, so we can tell if one was tried."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        listener.setblocking(False)
        yield listener


def run_replica(etcd: socket.socket, *extra: str) -> subprocess.CompletedProcess[str]:
    port = etcd.getsockname()[1]
    return subprocess.run([sys.executable, "-m", "singleton", "run", "--endpoints", f"http://127.0.0.1:{port}",
                           "--name", "ports", "--job", "singleton.dev.ledger:record_tick", *extra],
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)


def assert_untouched(etcd: socket.socket) -> None:
    with pytest.raises(BlockingIOError):
        etcd.accept()[0].close()  # nothing queued: no connection was made


def test_http_port_in_use_is_one_line_and_exit_2(held_port: int, fake_etcd: socket.socket) -> None:
    result = run_replica(fake_etcd, "--http-host", "127.0.0.1", "--http-port", str(held_port))
    assert result.returncode == 2, result.stderr
    assert result.stderr == (f"singleton: error: cannot serve /metrics and health on 127.0.0.1:{held_port}: "
                             f"address already in use; give this replica another --http-port "
                             f"(or 0 to turn it off)\n")
    assert_untouched(fake_etcd)


def test_admin_port_in_use_is_one_line_and_exit_2(held_port: int, fake_etcd: socket.socket) -> None:
    result = run_replica(fake_etcd, "--http-port", "0", "--admin-address", f"127.0.0.1:{held_port}")
    assert result.returncode == 2, result.stderr
    assert result.stderr == (f"singleton: error: cannot serve the admin API on 127.0.0.1:{held_port}: "
                             f"address already in use; give this replica another --admin-address\n")
    assert_untouched(fake_etcd)
