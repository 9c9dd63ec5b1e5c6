"""`singleton status --watch` and `singleton resign`: operator commands that talk to etcd only."""
from __future__ import annotations

import difflib
import json
import signal
import sys
import threading
import time
from typing import Any

from singleton.backends.abc import KeyValue
from singleton.core.config import Config
from singleton.core.errors import AuthError, ConfigError, SingletonError
from singleton.backends.etcd import EtcdBackend
from singleton.core.records import decode_leader
from singleton.ops.groups import group_leader, read_shards, shard_status, watch_groups


def describe_leader(kv: KeyValue) -> dict[str, Any]:
    """The leader key's holder, as `singleton status --json` shows it. The pid, host and lease tell apart
    two processes that were (wrongly) given the same --id."""
    record = decode_leader(kv.value)  # None: a value this version cannot read
    return {"replica_id": record.replica_id if record else None, "host": record.host if record else None,
            "pid": record.pid if record else None, "fencing_token": kv.create_revision,
            "elected_at_unix_s": record.elected_at_unix_s if record else None,
            "leading_for_s": round(time.time() - record.elected_at_unix_s, 3) if record else None,
            "lease_id": f"{kv.lease_id:x}"}


def names_under(backend: EtcdBackend, prefix: str, timeout_s: float, limit: int = 10000) -> set[str] | None:
    """The job names with any key under `prefix`/ (a vacant leader key leaves a resign or handover record
    behind), or None when etcd does not let us read the prefix (a user allowed only its own keys)."""
    from etcd3.etcdrpc import rpc_pb2 as pb
    from etcd3.etcdrpc import rpc_pb2_grpc as pb_grpc

    start = f"{prefix}/".encode()
    request = pb.RangeRequest(key=start, range_end=start[:-1] + b"0", keys_only=True, limit=limit)  # '/'+1
    try:
        # The backend has no public prefix read (nothing else needs one); _unary gives this read the same
        # deadline, endpoint failover, auth and error translation as every other call.
        resp = backend._unary(f"list {prefix}/", pb_grpc.KVStub, "Range", request, timeout_s)
    except AuthError:
        return None
    return {kv.key.decode(errors="replace")[len(start):].split("/", 1)[0] for kv in resp.kvs}


def leader_status(config: Config, timeout_s: float = 3.0, job: str | None = None) -> dict[str, Any]:
    """`singleton status`: the leader key, its holder and what is left of the holder's lease at etcd. With no
    leader, whether the name has left any record under the prefix (`known_name`: None if we may not look)."""
    backend = EtcdBackend.from_config(config)
    try:
        kv, revision = backend.get(config.leader_key, timeout_s)
        status: dict[str, Any] = {"name": config.name, "key": config.leader_key, "revision": revision,
                                  "leader": None}
        status["runs"] = runs_status(backend, config, timeout_s, leading=kv is not None, job=job)
        status["control"] = control_status(backend, config, timeout_s)
        shard = shard_status(backend, config, timeout_s)
        if shard is not None:  # sharded: each group has its own leader key, and the name's own is vacant
            status["shard"] = shard
        if kv is not None:
            status["leader"] = {**describe_leader(kv),
                                "lease_remaining_s": backend.lease_remaining_s(kv.lease_id, timeout_s)}
            return status
        if shard is not None:
            return status
        names = names_under(backend, config.prefix, timeout_s)
        status["known_name"] = None if names is None else config.name in names
        status["names_under_prefix"] = None if names is None else sorted(names)
        return status
    finally:
        backend.close()


def control_status(backend: EtcdBackend, config: Config, timeout_s: float) -> list[dict[str, Any]] | None:
    """Jobs that are paused (with who, why, until when) or have a skip or trigger pending; None if unreadable."""
    from singleton.ops.control import controls

    try:
        return controls(backend, config, timeout_s)
    except SingletonError:
        return None


def runs_status(backend: EtcdBackend, config: Config, timeout_s: float, *, leading: bool,
                job: str | None = None) -> dict[str, Any] | None:
    """The last run (from the history) and the next slot (after the last claim, while someone leads); None when
    the run record cannot be read or holds nothing. A named job's next slot depends on its schedule, which only
    the jobs file knows (`singleton next`): None here."""
    from singleton.ops.history import read_runs

    try:
        record, runs = read_runs(backend, config, 1, timeout_s, job)
    except SingletonError:
        return None
    if record is None:
        return None
    last = runs[0] if runs else None
    return {"last_claimed_slot": record.slot,
            "last_run": None if last is None else {"slot": last.slot, "outcome": last.outcome,
                                                   "replica_id": last.replica_id,
                                                   "duration_s": round(last.duration_s, 6)},
            "next_slot": record.slot + 1 if leading and job is None else None}


def describe_runs(runs: dict[str, Any]) -> str:
    last = runs["last_run"]
    text = f"last claimed slot {runs['last_claimed_slot']}"
    if last is not None:
        text += f"; last finished run: slot {last['slot']} {last['outcome']} on {last['replica_id']}"
    if runs["next_slot"] is not None:
        text += f"; next slot {runs['next_slot']}"
    return text


def describe_vacancy(config: Config, status: dict[str, Any]) -> str:
    """`singleton status` with no leader: a job between leaders (or stopped) vs a name nothing ever used."""
    where = f"{config.prefix}/{config.name}/"
    if status.get("known_name") is None:
        return f"{config.name}: no leader (key {status['key']} is vacant)"
    if status["known_name"]:
        return (f"{config.name}: no leader right now (key {status['key']} is vacant), but records of earlier "
                f"handovers or resigns exist under {where}: its replicas are stopped or between leaders")
    others = status["names_under_prefix"]
    close = difflib.get_close_matches(config.name, others, n=1)
    hint = (f"; did you mean {close[0]}?" if close else
            f"; names in use under {config.prefix}/: {', '.join(others[:10])}" if others else "")
    return (f"{config.name}: no replica has registered this name: nothing under {where} (no leader now, and "
            f"none ever handed over); check --name and --prefix{hint}")


def _change(kv: KeyValue | None) -> dict[str, Any]:
    """One leader change (watch and resign output): `leader` is the replica id, or None when vacant."""
    if kv is None:
        return {"leader": None, "fencing_token": 0}
    holder = describe_leader(kv)
    return {"leader": holder["replica_id"] or "?", **holder}


def watch_leader(config: Config, *, as_json: bool, max_events: int = 0, timeout_s: float = 3.0) -> int:
    """Print the leader now, then a line on every change, with the time since the previous change. A sharded name:
    each group's leader, then a line on every group's change (ops/groups.watch_groups)."""
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        if threading.current_thread() is threading.main_thread():
            signal.signal(sig, lambda *_: stop.set())
    backend = EtcdBackend.from_config(config)
    try:
        kv, revision = backend.get(config.leader_key, timeout_s)
        if kv is None and read_shards(backend, config, timeout_s).sharded:
            return watch_groups(backend, config, stop, as_json=as_json, max_events=max_events, timeout_s=timeout_s)
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


def resign_leader(config: Config, *, as_json: bool, timeout_s: float = 15.0, call_timeout_s: float = 3.0,
                  group: str | None = None) -> int:
    """Ask the leader to step down: write its token to the resign key (guarded by that token), then wait
    until the leader key has another holder or is vacant. `group`: with sharding, that group's leader
    (`<prefix>/<name>/groups/<group>/resign`); it withdraws from the group for a while and hands it over."""
    backend = EtcdBackend.from_config(config)
    try:
        kv: KeyValue | None
        if group is not None:
            kv = group_leader(backend, config, group, call_timeout_s)
            config, label = config.for_group(group), f"{config.name} group {group}"
        else:
            kv, _ = backend.get(config.leader_key, call_timeout_s)
            label = config.name
        if kv is None:
            shards = read_shards(backend, config, call_timeout_s)
            if shards.sharded:
                raise ConfigError(f"{config.name} is sharded: each group has its own leader; resign one with "
                                  f"--group G (groups: {', '.join(sorted(shards.groups)[:20])})")
            raise SingletonError(f"{config.name}: no leader to resign")
        old = _change(kv)
        token = kv.create_revision
        if not backend.guarded_put(config.leader_key, token, config.resign_key, str(token).encode(), call_timeout_s):
            raise SingletonError(f"{label}: the leader changed while asking; try again")
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            now_kv, _ = backend.get(config.leader_key, call_timeout_s)
            if now_kv is not None and now_kv.create_revision != token:
                new = _change(now_kv)
                if as_json:
                    print(json.dumps({**({"group": group} if group is not None else {}), "resigned": old,
                                      "new_leader": new}))
                else:
                    print(f"{label}: {old['leader']} (token {token}) resigned; "
                          f"{new['leader']} leads now (token {new['fencing_token']})")
                return 0
            time.sleep(0.05)
        print(f"singleton: {label}: {old['leader']} did not hand over within {timeout_s:g} s "
              f"(no standby, or it could not resign)", file=sys.stderr)
        return 1
    finally:
        backend.close()
