"""`singleton pause | resume | skip-next | trigger`: operators' control of a job, written to etcd (core.control).

A command edits the job's control record in a compare-and-swap transaction that also writes the control event (who,
when, why), and returns once etcd has it: that is the acknowledgment. The leader follows the record through a watch,
and every claim compares it (runtime.control), so no claim made after the acknowledgment ignores it. `trigger` then
waits (`--wait`) for the leader's answer: the manual run's number, or why it was refused.
"""
from __future__ import annotations

import difflib
import getpass
import json
import socket
import time
from collections.abc import Callable
from typing import Any

from singleton.backends.abc import Backend
from singleton.core import control as ctl
from singleton.core.config import Config
from singleton.core.errors import ConfigError, SingletonError
from singleton.core.records import decode_leader
from singleton.ops.groups import read_shards

Edit = Callable[[ctl.JobControl], tuple[ctl.JobControl, ctl.ControlEvent]]
_CAS_TRIES = 20


def default_by() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no name for our uid (a container's random uid)
        user = "?"
    return f"{user}@{socket.gethostname()}"


def _unknown(job: str, config: Config, who: str, jobs: list[str]) -> ConfigError:
    close = difflib.get_close_matches(job, jobs, n=1)
    return ConfigError(f"unknown job {job!r} of {config.name}: {who} {', '.join(sorted(jobs)[:20])}"
                       + (f" (did you mean {close[0]}?)" if close else ""))


def job_group(backend: Backend, config: Config, job: str | None, timeout_s: float) -> str | None:
    """With sharding, the group whose leader runs `job` (None: not sharded, or no group of it is known now)."""
    if not job:
        return None
    shards = read_shards(backend, config, timeout_s)
    return shards.job_group(job) if shards.sharded else None


def check_job(backend: Backend, config: Config, job: str | None, timeout_s: float) -> None:
    """One line naming what is wrong when `job` left no trace under the name (a misspelt --job or --name). With
    sharding the leader that names its jobs is the job's group's (`config.for_group`)."""
    base = f"{config.prefix}/{config.name}"
    if job:
        found = backend.get_many([config.leader_key, config.job_run_key(job), ctl.control_key(config, job)], timeout_s)
        leader = found.pop(config.leader_key, None)
        record = decode_leader(leader.value) if leader is not None else None
        if record is not None and record.jobs:  # the leader names the jobs it runs
            if job in record.jobs:
                return
            raise _unknown(job, config, "the leader runs", list(record.jobs))
        shards = read_shards(backend, config, timeout_s) if leader is None else None
        if shards is not None and shards.sharded:
            if shards.job_group(job) is not None or found:
                return  # led now, or a known group between leaders, or a job with records
            led = shards.led_jobs()
            if led:
                raise _unknown(job, config, "the group leaders run", list(led))
        if found:
            return
        known = sorted({k.key[len(base) + len("/jobs/"):].split("/", 1)[0]
                        for k in backend.get_prefix(f"{base}/jobs/", timeout_s) if k.key.endswith("/run")})
        hint = f"; jobs with a run record: {', '.join(known[:20])}" if known else ""
        raise ConfigError(f"unknown job {job!r} of {config.name}: no run record at {config.job_run_key(job)} and no "
                          f"control record{hint} (a job that never ran yet: add --force)")
    found = backend.get_many([config.leader_key, config.run_key, config.handover_key, ctl.control_key(config, None)],
                             timeout_s)
    if not found:
        raise ConfigError(f"{config.name}: nothing under {base}/ (no leader, no run record): check --name and "
                          f"--prefix, or name a job with --job")


def apply(backend: Backend, config: Config, job: str | None, edit: Edit,
          timeout_s: float = 3.0) -> tuple[ctl.JobControl, ctl.ControlEvent, int]:
    """Edit the job's control record and write its event, in one compare-and-swap (retried when another writer, or the
    leader consuming a request, got there first). Returns the record, the event and etcd's revision of the write."""
    key = ctl.control_key(config, job)
    for _ in range(_CAS_TRIES):
        kv, _ = backend.get(key, timeout_s)
        new, event = edit(ctl.decode_control(kv.value) if kv is not None else ctl.JobControl())
        revision = backend.compare_and_put([(key, kv.mod_revision if kv is not None else 0)],
                                           {key: new.SerializeToString(),
                                            ctl.event_key(config, job, event.seq): event.SerializeToString()},
                                           timeout_s)
        if revision is not None:
            return new, event, revision
    raise SingletonError(f"the control record {key} kept changing under us ({_CAS_TRIES} tries); try again")


def read_events(backend: Backend, config: Config, job: str | None, limit: int,
                timeout_s: float = 3.0) -> list[dict[str, Any]]:
    """The job's control events, newest first."""
    events = [e for e in (ctl.decode_event(kv.value) for kv in
                          backend.get_prefix(ctl.events_prefix(config, job), timeout_s)) if e is not None]
    events.sort(key=lambda e: e.seq, reverse=True)
    return [describe_event(e) for e in events[:limit]]


def describe_event(e: ctl.ControlEvent) -> dict[str, Any]:
    return {"seq": e.seq, "kind": e.kind, "by": e.by or None, "reason": e.reason or None, "at_unix_s": e.at_unix_s,
            "until_unix_s": e.until_unix_s or None, "slot": e.slot or None, "trigger_id": e.trigger_id or None,
            "fencing_token": e.fencing_token or None}


def describe_control(job: str, c: ctl.JobControl, now: float) -> dict[str, Any]:
    expired = bool(c.paused and c.until_unix_s and now >= c.until_unix_s)
    return {"job": job or None, "paused": c.paused and not expired, "pause_expired": expired,
            "reason": c.reason or None, "by": c.by or None, "at_unix_s": c.at_unix_s or None,
            "until_unix_s": c.until_unix_s or None, "skip_next": c.skip_next,
            "pending_triggers": [t.id for t in c.triggers]}


def controls(backend: Backend, config: Config, timeout_s: float = 3.0) -> list[dict[str, Any]]:
    """Every job whose control record says something (paused, an expired pause, a pending skip or trigger)."""
    now, out = time.time(), []
    for kv in backend.get_prefix(ctl.control_prefix(config), timeout_s):
        job = ctl.job_of_key(config, kv.key)
        if job is None:
            continue
        state = describe_control(job, ctl.decode_control(kv.value), now)
        if state["paused"] or state["pause_expired"] or state["skip_next"] or state["pending_triggers"]:
            out.append(state)
    return out


def _utc(unix_s: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(unix_s))


def describe_line(name: str, state: dict[str, Any]) -> str:
    """One line of `singleton status` for a job under control."""
    who = f"{name} job {state['job']}" if state["job"] else name
    parts = []
    if state["paused"]:
        until = f" until {_utc(state['until_unix_s'])}" if state["until_unix_s"] else " until resumed"
        parts.append(f"PAUSED by {state['by'] or '?'} since {_utc(state['at_unix_s'] or 0)}{until}"
                     f"{': ' + repr(state['reason']) if state['reason'] else ''}")
    elif state["pause_expired"]:
        parts.append(f"pause by {state['by'] or '?'} expired at {_utc(state['until_unix_s'])}")
    if state["skip_next"]:
        parts.append("its next slot will be skipped")
    if state["pending_triggers"]:
        parts.append(f"{len(state['pending_triggers'])} trigger(s) pending")
    return f"{who}: {'; '.join(parts)}"


def leader_of(backend: Backend, config: Config, timeout_s: float = 3.0) -> str | None:
    """The replica id that holds `config.leader_key` now (a group's, with `config.for_group`), or None."""
    kv, _ = backend.get(config.leader_key, timeout_s)
    record = decode_leader(kv.value) if kv is not None else None
    return None if kv is None else (record.replica_id if record is not None else "?")


def wait_for_answer(backend: Backend, config: Config, job: str | None, trigger_id: str,
                    timeout_s: float) -> dict[str, Any] | None:
    """The leader's answer to a trigger (its `triggered` or `trigger-refused` event), or None within `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        for event in read_events(backend, config, job, ctl.EVENTS_SIZE):
            if event["trigger_id"] == trigger_id and event["kind"] in ("triggered", "trigger-refused"):
                return event
        if time.monotonic() >= deadline:
            return None
        time.sleep(min(0.1, max(0.0, deadline - time.monotonic())))


def run_verb(backend: Backend, config: Config, verb: str, job: str | None, *, by: str, reason: str,
             for_s: float | None = None, timeout_s: float = 3.0) -> tuple[ctl.JobControl, ctl.ControlEvent, int]:
    now = time.time()
    edits: dict[str, Edit] = {
        "pause": lambda c: ctl.pause(c, by, reason, now, for_s),
        "resume": lambda c: ctl.resume(c, by, reason, now),
        "skip-next": lambda c: ctl.skip_next(c, by, reason, now),
        "trigger": lambda c: ctl.trigger(c, by, reason, now),
    }
    return apply(backend, config, job, edits[verb], timeout_s)


def control_command(backend: Backend, config: Config, verb: str, job: str | None, *, by: str | None, reason: str,
                    for_text: str | None, as_json: bool, force: bool, wait_s: float) -> int:
    """The CLI verbs. Exit 0: done (trigger: the run was claimed); 1: a trigger refused or not answered in time."""
    for_s = ctl.parse_duration(for_text) if for_text else None
    if wait_s < 0:
        raise ConfigError(f"--wait must be >= 0 (got {wait_s:g})")
    if not force:
        check_job(backend, config, job, 3.0)
    group = job_group(backend, config, job, 3.0)
    control, event, revision = run_verb(backend, config, verb, job, by=by or default_by(), reason=reason,
                                        for_s=for_s)
    who = f"{config.name} job {job}" if job else config.name
    out: dict[str, Any] = {"name": config.name, "job": job, "verb": verb, "revision": revision,
                           "event": describe_event(event), "control": describe_control(job or "", control, time.time())}
    if group is not None:  # sharded: the job's leader is its group's
        out["group"], out["leader"] = group, leader_of(backend, config.for_group(group))
        who += f" (group {group}, leader {out['leader'] or 'none right now'})"
    text = {"pause": f"{who}: paused" + (f" until {_utc(event.until_unix_s)}" if event.until_unix_s else
                                         " until resumed") + " (no slot claimed from now on is run)",
            "resume": f"{who}: resumed", "skip-next": f"{who}: its next slot not yet claimed will be skipped",
            "trigger": f"{who}: trigger {event.trigger_id} written"}[verb] + f" [etcd revision {revision}]"
    code = 0
    if verb == "trigger" and wait_s > 0:
        answer = out["answer"] = wait_for_answer(backend, config, job, event.trigger_id, wait_s)
        if answer is None:
            text += f"; no leader answered within {wait_s:g} s (it stays pending: the next leader runs it once)"
            code = 1
        elif answer["kind"] == "triggered":
            text += f"; claimed as run #{answer['slot']} (token {answer['fencing_token']}): see singleton history"
        else:
            text += f"; refused: {answer['reason']}"
            code = 1
    print(json.dumps(out, indent=2) if as_json else text)
    return code
