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


def describe_leader(kv: KeyValue) -> dict[str, Any]:
    """The leader key's holder, as `singleton status --json` shows it. The pid, host and lease tell apart
    two processes that were (wrongly) given the same --id."""
    record = decode_leader(kv.value)  # None: a value this version cannot read
    return {"replica_id": record.replica_id if record else None, "host": record.host if record else None,
            "pid": record.pid if record else None, "fencing_token": kv.create_revision,
            "elected_at_unix_s": record.elected_at_unix_s if record else None,
            "leading_for_s": round(time.time() - record.elected_at_unix_s, 3) if record else None,
            "lease_id": f"{kv.lease_id:x}"}


def leader_status(config: Config, timeout_s: float = 3.0) -> dict[str, Any]:
    """`singleton status`: the leader key, its holder and what is left of the holder's lease at etcd."""
    backend = EtcdBackend.from_config(config)
    try:
        kv, revision = backend.get(config.leader_key, timeout_s)
        leader = None
        if kv is not None:
            leader = {**describe_leader(kv), "lease_remaining_s": backend.lease_remaining_s(kv.lease_id, timeout_s)}
        return {"name": config.name, "key": config.leader_key, "revision": revision, "leader": leader}
    finally:
        backend.close()


def _change(kv: KeyValue | None) -> dict[str, Any]:
    """One leader change (watch and resign output): `leader` is the replica id, or None when vacant."""
    if kv is None:
        return {"leader": None, "fencing_token": 0}
    holder = describe_leader(kv)
    return {"leader": holder["replica_id"] or "?", **holder}


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
                who = (f"{state['leader']} (pid {state['pid']}, lease {state['lease_id']}, token "
                       f"{state['fencing_token']})" if state["leader"] else "no leader")
                after = "" if since is None else f"  [{since:.2f} s after the previous change]"
                print(f"{time.strftime('%H:%M:%S')}  {config.name}: {who}{after}", flush=True)

        show(_change(kv), None)
        events = 0
        for event in backend.watch(config.leader_key, revision + 1, stop):
            now = time.monotonic()
            show(_change(None if event.deleted else event.kv), now - last_change)
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
        old = _change(kv)
        token = kv.create_revision
        if not backend.guarded_put(config.leader_key, token, config.resign_key, str(token).encode(), call_timeout_s):
            raise SingletonError(f"{config.name}: the leader changed while asking; try again")
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            now_kv, _ = backend.get(config.leader_key, call_timeout_s)
            if now_kv is not None and now_kv.create_revision != token:
                new = _change(now_kv)
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
