"""`singleton status --watch` and `singleton resign`: operator commands that talk to etcd only."""
from __future__ import annotations

import json
import signal
import sys
import threading
import time
from typing import Any

from singleton.backends.abc import KeyValue
from singleton.core.config import Config
from singleton.core.errors import SingletonError
from singleton.backends.etcd import EtcdBackend
from singleton.core.records import decode_leader


def _describe(kv: KeyValue | None) -> dict[str, Any]:
    if kv is None:
        return {"leader": None, "fencing_token": 0}
    record = decode_leader(kv.value)
    return {"leader": record.replica_id if record else "?", "host": record.host if record else None,
            "fencing_token": kv.create_revision}


def watch_leader(config: Config, *, as_json: bool, max_events: int = 0, timeout_s: float = 3.0) -> int:
    """Print the leader now, then a line on every change, with the time since the previous change."""
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        if threading.current_thread() is threading.main_thread():
            signal.signal(sig, lambda *_: stop.set())
    backend = EtcdBackend.from_config(config)
    try:
        kv, revision = backend.get(config.leader_key, timeout_s)
        last_change = time.monotonic()

        def show(state: dict[str, Any], since: float | None) -> None:
            line = {"unix_s": round(time.time(), 3), "name": config.name, **state,
                    "since_last_change_s": None if since is None else round(since, 3)}
            if as_json:
                print(json.dumps(line), flush=True)
            else:
                who = f"{state['leader']} (token {state['fencing_token']})" if state["leader"] else "no leader"
                after = "" if since is None else f"  [{since:.2f} s after the previous change]"
                print(f"{time.strftime('%H:%M:%S')}  {config.name}: {who}{after}", flush=True)

        show(_describe(kv), None)
        events = 0
        for event in backend.watch(config.leader_key, revision + 1, stop):
            now = time.monotonic()
            show(_describe(None if event.deleted else event.kv), now - last_change)
            last_change = now
            events += 1
            if max_events and events >= max_events:
                break
        return 0
    finally:
        backend.close()


def resign_leader(config: Config, *, as_json: bool, timeout_s: float = 15.0, call_timeout_s: float = 3.0) -> int:
    """Ask the leader to step down: write its token to the resign key (guarded by that token), then wait
    until the leader key has another holder or is vacant."""
    backend = EtcdBackend.from_config(config)
    try:
        kv, _ = backend.get(config.leader_key, call_timeout_s)
        if kv is None:
            raise SingletonError(f"{config.name}: no leader to resign")
        old = _describe(kv)
        token = kv.create_revision
        if not backend.guarded_put(config.leader_key, token, config.resign_key, str(token).encode(), call_timeout_s):
            raise SingletonError(f"{config.name}: the leader changed while asking; try again")
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            now_kv, _ = backend.get(config.leader_key, call_timeout_s)
            if now_kv is not None and now_kv.create_revision != token:
                new = _describe(now_kv)
                if as_json:
                    print(json.dumps({"resigned": old, "new_leader": new}))
                else:
                    print(f"{config.name}: {old['leader']} (token {token}) resigned; "
                          f"{new['leader']} leads now (token {new['fencing_token']})")
                return 0
            time.sleep(0.05)
        print(f"singleton: {config.name}: {old['leader']} did not hand over within {timeout_s:g} s "
              f"(no standby, or it could not resign)", file=sys.stderr)
        return 1
    finally:
        backend.close()
