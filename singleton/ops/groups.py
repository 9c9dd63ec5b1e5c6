"""Sharding as the operator commands see it, read from etcd only: the members (`<prefix>/<name>/members/`) and each
group's leader (`<prefix>/<name>/groups/<g>/leader`). `status` shows them, `resign --group` and the job control verbs
find a group's leader here. Sharding is detected from those keys: status and the verbs need no --shard."""
from __future__ import annotations

import difflib
import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from singleton.backends.abc import Backend, KeyValue
from singleton.core.config import Config
from singleton.core.errors import BackendError, ConfigError, SingletonError
from singleton.core.records import decode_leader
from singleton.v1.leader_pb2 import MemberRecord


@dataclass
class Shards:
    """What etcd holds about the sharded replicas of one name (all empty: not sharded, or none runs now)."""

    members: dict[str, tuple[KeyValue, MemberRecord | None]] = field(default_factory=dict)
    leaders: dict[str, KeyValue] = field(default_factory=dict)  # group -> its leader key
    groups: set[str] = field(default_factory=set)  # every group named by a key or offered by a member

    @property
    def sharded(self) -> bool:
        return bool(self.members or self.groups)

    def job_group(self, job: str) -> str | None:
        """The group whose leader runs `job` (its leader record lists the group's jobs); else a vacant group of that
        name (a job is its own group by default) that some member offers or that left keys; else None. A led group
        whose jobs do not include its own name is no job's name."""
        for group, kv in sorted(self.leaders.items()):
            record = decode_leader(kv.value)
            if record is not None and job in record.jobs:
                return group
        return job if job in self.groups and job not in self.leaders else None

    def led_jobs(self) -> dict[str, str]:
        """Job -> group, for every job a group leader runs now."""
        out: dict[str, str] = {}
        for group, kv in self.leaders.items():
            record = decode_leader(kv.value)
            for job in record.jobs if record is not None else ():
                out[job] = group
        return out


def _member(kv: KeyValue) -> MemberRecord | None:
    try:
        return MemberRecord.FromString(kv.value)
    except Exception:  # noqa: BLE001 - a value this version cannot read: shown as unknown
        return None


def read_shards(backend: Backend, config: Config, timeout_s: float) -> Shards:
    """Two prefix reads (members/, groups/)."""
    shards = Shards()
    for kv in backend.get_prefix(config.members_prefix, timeout_s):
        replica = kv.key[len(config.members_prefix):]
        record = _member(kv)
        shards.members[replica] = (kv, record)
        shards.groups.update(record.groups if record is not None else ())
    for kv in backend.get_prefix(config.groups_prefix, timeout_s):
        group, _, leaf = kv.key[len(config.groups_prefix):].rpartition("/")
        if not group:
            continue
        shards.groups.add(group)
        if leaf == "leader":
            shards.leaders[group] = kv
    return shards


def shard_status(backend: Backend, config: Config, timeout_s: float) -> dict[str, Any] | None:
    """`singleton status` with sharding: the members and each group's leader, with what is left of each lease at
    etcd (one TimeToLive per distinct lease: every group a replica leads shares its member lease). None when no key
    says the name is sharded."""
    shards = read_shards(backend, config, timeout_s)
    if not shards.sharded:
        return None
    left: dict[int, float | None] = {}

    def remaining(lease_id: int) -> float | None:
        if lease_id not in left:
            try:
                left[lease_id] = round(backend.lease_remaining_s(lease_id, timeout_s), 3)
            except BackendError:
                left[lease_id] = None
        return left[lease_id]

    members = []
    for replica, (member_kv, member) in sorted(shards.members.items()):
        members.append({"replica_id": replica, "host": member.host if member else None,
                        "pid": member.pid if member else None, "lease_id": f"{member_kv.lease_id:x}",
                        "lease_remaining_s": remaining(member_kv.lease_id),
                        "registered_at_unix_s": member.registered_at_unix_s if member else None,
                        "groups": sorted(member.groups) if member else []})
    groups = []
    now = time.time()
    for group in sorted(shards.groups):
        kv = shards.leaders.get(group)
        leader = None
        if kv is not None:
            rec = decode_leader(kv.value)
            leader = {"replica_id": rec.replica_id if rec else None, "host": rec.host if rec else None,
                      "pid": rec.pid if rec else None, "fencing_token": kv.create_revision,
                      "lease_id": f"{kv.lease_id:x}", "lease_remaining_s": remaining(kv.lease_id),
                      "elected_at_unix_s": rec.elected_at_unix_s if rec else None,
                      "leading_for_s": round(now - rec.elected_at_unix_s, 3) if rec else None}
        offered_by = sorted(r for r, (_kv, m) in shards.members.items() if m is not None and group in m.groups)
        record = decode_leader(kv.value) if kv is not None else None
        groups.append({"group": group, "leader": leader, "jobs": sorted(record.jobs) if record else [],
                       "offered_by": offered_by})
    vacant = [g["group"] for g in groups if g["leader"] is None and g["offered_by"]]
    return {"members": members, "groups": groups, "led": sum(1 for g in groups if g["leader"] is not None),
            "vacant": vacant}


def job_groups(shard: dict[str, Any], job: str) -> tuple[str | None, str | None]:
    """From shard_status(): (the group whose leader runs `job`, that leader's replica id); a group of the job's own
    name that nobody leads now: (group, None); else (None, None)."""
    for g in shard["groups"]:
        if job in g["jobs"]:
            return g["group"], g["leader"]["replica_id"] if g["leader"] else None
    return (job, None) if any(g["group"] == job and g["leader"] is None for g in shard["groups"]) else (None, None)


def describe_shards(name: str, shard: dict[str, Any]) -> list[str]:
    """The text lines of `singleton status` for a sharded name."""
    lines = [f"{name}: sharded: {len(shard['members'])} member(s), {len(shard['groups'])} group(s), "
             f"{shard['led']} led, {len(shard['vacant'])} vacant"]
    for m in shard["members"]:
        lease = f"lease {m['lease_id']}" + (f" with {m['lease_remaining_s']:.0f} s left"
                                            if m["lease_remaining_s"] is not None else "")
        offers = ", ".join(m["groups"][:20]) + (f" (+{len(m['groups']) - 20})" if len(m["groups"]) > 20 else "")
        lines.append(f"{name} member {m['replica_id']} (host {m['host']}, pid {m['pid']}), {lease}, offers "
                     f"{len(m['groups'])} group(s): {offers or '-'}")
    for g in shard["groups"]:
        leader = g["leader"]
        if leader is None:
            why = "vacant" if g["offered_by"] else "no member offers it"
            lines.append(f"{name} group {g['group']}: no leader ({why})")
            continue
        lease = f"lease {leader['lease_id']}" + (f" with {leader['lease_remaining_s']:.0f} s left"
                                                 if leader["lease_remaining_s"] is not None else "")
        since = f", leading for {leader['leading_for_s']:.1f} s" if leader["leading_for_s"] is not None else ""
        jobs = f"; jobs {', '.join(g['jobs'])}" if g["jobs"] else ""
        lines.append(f"{name} group {g['group']}: leader {leader['replica_id']} (host {leader['host']}, pid "
                     f"{leader['pid']}), token {leader['fencing_token']}{since}, {lease}{jobs}")
    return lines


def group_leader(backend: Backend, config: Config, group: str, timeout_s: float) -> KeyValue:
    """The leader key of `group`, or one line saying why there is none: not sharded, an unknown group (with the one
    probably meant), or a known group that is vacant right now."""
    kv, _ = backend.get(config.for_group(group).leader_key, timeout_s)
    if kv is not None:
        return kv
    shards = read_shards(backend, config, timeout_s)
    if not shards.sharded:
        raise ConfigError(f"{config.name} is not sharded: nothing under {config.members_prefix} or "
                          f"{config.groups_prefix} (resign without --group resigns its one leader)")
    if group not in shards.groups:
        close = difflib.get_close_matches(group, sorted(shards.groups), n=1)
        known = ", ".join(sorted(shards.groups)[:20])
        raise ConfigError(f"unknown group {group!r} of {config.name}" + (f" (did you mean {close[0]}?)" if close else
                                                                          f"; groups: {known}"))
    raise SingletonError(f"{config.name} group {group}: no leader right now (vacant)")


def _holder(kv: KeyValue | None) -> dict[str, Any]:
    record = decode_leader(kv.value) if kv is not None else None
    if kv is None:
        return {"leader": None, "fencing_token": 0}
    return {"leader": record.replica_id if record else "?", "pid": record.pid if record else None,
            "lease_id": f"{kv.lease_id:x}", "fencing_token": kv.create_revision}


def watch_groups(backend: Backend, config: Config, stop: threading.Event, *, as_json: bool, max_events: int,
                 timeout_s: float) -> int:
    """`status --watch` on a sharded name: each group's leader now, then a line per change of any group's leader
    (one watch on `<prefix>/<name>/groups/`), with the time since that group's previous change."""
    kvs, revision = backend.read_prefix(config.groups_prefix, timeout_s)
    last: dict[str, float] = {}

    def show(group: str, kv: KeyValue | None, since: float | None) -> None:
        state = _holder(kv)
        if as_json:
            print(json.dumps({"unix_s": round(time.time(), 3), "name": config.name, "group": group, **state,
                              "since_last_change_s": None if since is None else round(since, 3)}), flush=True)
            return
        who = (f"{state['leader']} (pid {state['pid']}, lease {state['lease_id']}, token {state['fencing_token']})"
               if state["leader"] else "no leader")
        after = "" if since is None else f"  [{since:.2f} s after the group's previous change]"
        print(f"{time.strftime('%H:%M:%S')}  {config.name} group {group}: {who}{after}", flush=True)

    def split(key: str) -> tuple[str, str]:
        group, _, leaf = key[len(config.groups_prefix):].rpartition("/")
        return group, leaf

    now = time.monotonic()
    groups = {split(kv.key)[0] for kv in kvs if split(kv.key)[0]}
    leaders = {split(kv.key)[0]: kv for kv in kvs if split(kv.key)[1] == "leader"}
    for group in sorted(groups):
        show(group, leaders.get(group), None)
        last[group] = now
    events = 0
    for event in backend.watch(config.groups_prefix, revision + 1, stop, prefix=True):
        group, leaf = split(event.kv.key)
        if leaf != "leader" or not group:
            continue
        now = time.monotonic()
        show(group, None if event.deleted else event.kv, now - last[group] if group in last else None)
        last[group] = now
        events += 1
        if max_events and events >= max_events:
            break
    return 0
