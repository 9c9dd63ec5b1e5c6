"""`singleton dev-etcd`: a throwaway local etcd for trying singleton by hand. It prints the endpoint and
commands ready to paste, and on Ctrl-C or SIGTERM stops etcd and deletes its data."""
from __future__ import annotations

import signal
import socket
import sys
import threading
from pathlib import Path
from types import FrameType

from singleton.core.errors import ConfigError, SingletonError
from singleton.dev.embedded import EtcdCluster


def _port_taken(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def _tail(path: Path, lines: int = 10) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def run_dev_etcd(port: int = 2379, members: int = 1) -> int:
    if members not in (1, 3):
        raise ConfigError(f"--members must be 1 or 3 (got {members})")
    if not 0 <= port <= 65535:
        raise ConfigError(f"bad --port {port}: a number from 0 (a free port) to 65535")
    if port and _port_taken(port):
        raise ConfigError(f"port {port} on 127.0.0.1 is in use (another etcd?): pick another --port, "
                          f"or --port 0 for a free one")
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    # Handlers before etcd starts: a Ctrl-C during the start still ends in the cleanup below.
    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    cluster = EtcdCluster(members)  # its own temp dir, which stop() removes
    try:
        if port:
            cluster.members[0].client_port = port
        print(f"starting etcd ({members} member{'s' if members > 1 else ''}) in {cluster.base_dir} ...", flush=True)
        try:
            cluster.start()
        except SingletonError as err:  # its log goes with the temp dir: show the end of it now
            raise SingletonError(f"{err}\n{_tail(cluster.members[0].log_path)}") from None
        endpoints = cluster.endpoints_arg
        print(f"etcd is ready. endpoint: {endpoints}\n"
              f"\nIn other terminals, try (each replica needs its own --id and --http-port):\n"
              f"  singleton run --endpoints {endpoints} --name hello --job singleton.examples:hello "
              f"--id one --http-host 127.0.0.1 --http-port 9464\n"
              f"  singleton run --endpoints {endpoints} --name hello --job singleton.examples:hello "
              f"--id two --http-port 0\n"
              f"  singleton status --watch --endpoints {endpoints} --name hello\n"
              f"\nCtrl-C stops etcd and deletes its data.", flush=True)
        while not stop.wait(0.5):
            dead = [m for m in cluster.members if not m.running]
            # A terminal's Ctrl-C reaches etcd too: a member gone just before our own signal is no failure.
            if dead and not stop.wait(0.5):
                print(f"singleton: etcd {dead[0].name} exited on its own; the end of its log:\n"
                      f"{_tail(dead[0].log_path)}", file=sys.stderr, flush=True)
                return 1
        return 0
    finally:
        cluster.stop()  # stops every member, then removes the temp dir
        print(f"etcd stopped; {cluster.base_dir} removed", flush=True)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
