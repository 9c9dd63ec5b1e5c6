"""A peer holder for bench/failover_peers.py: take a lock, then run a 1 s job at whole seconds while holding it.

    python bench/lock_worker.py KIND ENDPOINT NAME ID LEDGER

KIND: `etcd3` (python3-etcd3's Lock, TTL 10 s, refreshed every 3 s), `tooz` (tooz's etcd3gw driver, lock TTL
10 s, heartbeat every 3 s), `tick` (no lock: what `etcdctl lock --ttl 10 NAME <this> tick ...` runs while it holds
the lock). Each tick appends start/end lines to LEDGER in the format of singleton.dev.ledger. SIGTERM releases the
lock and exits.
"""
from __future__ import annotations

import json
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Callable

TTL_S = 10
REFRESH_S = 3.0


def append(path: str, record: dict[str, object]) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (json.dumps(record) + "\n").encode())
    finally:
        os.close(fd)


def tick_loop(replica: str, ledger: str, stop: threading.Event, refresh: Callable[[], object] | None) -> None:
    next_refresh = time.monotonic() + REFRESH_S
    while not stop.is_set():
        if stop.wait(1 - time.time() % 1):
            return
        slot = math.floor(time.time())
        base = {"replica": replica, "pid": os.getpid(), "token": 0, "slot": slot}
        append(ledger, {**base, "ev": "start", "mono": time.monotonic(), "wall": time.time()})
        time.sleep(0.05)  # the job's work, as the singleton ledger job holds 50 ms
        append(ledger, {**base, "ev": "end", "mono": time.monotonic(), "wall": time.time()})
        if refresh is not None and time.monotonic() >= next_refresh:
            refresh()
            next_refresh = time.monotonic() + REFRESH_S


def main() -> None:
    kind, endpoint, name, replica, ledger = sys.argv[1:6]
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    host, port = endpoint.rsplit("/", 1)[-1].rsplit(":", 1)
    if kind == "tick":
        tick_loop(replica, ledger, stop, None)
    elif kind == "etcd3":
        import etcd3
        client = etcd3.client(host=host, port=int(port))
        lock = client.lock(name, ttl=TTL_S)
        print("waiting for the lock", flush=True)  # bench/holders.py: a standby now
        lock.acquire(timeout=None)  # blocks until held (it watches the lock key)
        if not stop.is_set():
            tick_loop(replica, ledger, stop, lock.refresh)
            lock.release()
    elif kind == "tooz":
        from tooz import coordination
        coord = coordination.get_coordinator(f"etcd3+http://{host}:{port}?timeout={TTL_S}", replica.encode())
        coord.start()
        lock = coord.get_lock(name.encode())
        print("waiting for the lock", flush=True)  # bench/holders.py: a standby now
        lock.acquire(blocking=True)  # tooz retries the transaction, backing off to 1 s between tries
        if not stop.is_set():
            tick_loop(replica, ledger, stop, coord.heartbeat)
            lock.release()
        coord.stop()
    else:
        sys.exit(f"unknown kind {kind!r}")


if __name__ == "__main__":
    main()
