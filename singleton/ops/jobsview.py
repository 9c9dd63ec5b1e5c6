"""Each job's next instants (`singleton next`, `singleton status`) and its records in etcd (`singleton status`).

The instants come from the schedule alone (core/schedule.py): no clock but the one given, no etcd, so every
replica and every operator's shell prints the same list for the same time.
"""
from __future__ import annotations

import json
import math
import time
from datetime import datetime, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo

from singleton.backends.abc import Backend
from singleton.core.config import Config
from singleton.core.errors import ConfigError
from singleton.core.jobspec import JobSpec, build_job_spec, default_job_name
from singleton.core.schedule import Cron, Interval, jitter_offset_s, next_instants
from singleton.ops.jobsfile import load_job, load_jobs_file
from singleton.runtime.jobs import JobFn


ZERO = timedelta(0)


def jobs_prefix(config: Config) -> str:
    """Where the named jobs' records live (Config.job_run_key's rule)."""
    return f"{config.prefix}/{config.name}/jobs/"


def job_run_key(config: Config, job: str) -> str:
    return config.job_run_key(job)


def job_history_prefix(config: Config, job: str) -> str:
    return config.job_history_prefix(job)


def load_jobs(jobs_file: str | None, job: str | None) -> list[tuple[JobSpec, JobFn]]:
    """`--jobs FILE`, or `--job M:F` alone: one job every second, as `singleton run --job` runs it."""
    if jobs_file:
        return load_jobs_file(jobs_file)
    if not job:
        raise ConfigError("give --jobs FILE or --job package.module:callable")
    fn = load_job(job)
    return [(build_job_spec(default_job_name(fn), job), fn)]


def parse_at(text: str) -> float:
    """`--at`: ISO 8601 (`2026-03-29T00:00:00Z`, `2026-03-29 02:00+02:00`); without an offset it is UTC."""
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ConfigError(f"--at {text!r} is not an ISO 8601 time (e.g. 2026-03-29T00:00:00Z)") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return when.timestamp()


def describe_schedule(spec: JobSpec) -> str:
    text = spec.schedule.describe()
    if spec.jitter_s:
        text += f", jitter up to {spec.jitter_s:g} s"
    return text


def _utc(wall: float, with_ms: bool) -> str:
    moment = datetime.fromtimestamp(wall, timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S") + (f".{moment.microsecond // 1000:03d}" if with_ms else "") + "Z"


def _with_ms(spec: JobSpec) -> bool:
    return isinstance(spec.schedule, Interval) and spec.schedule.period_ms % 1000 != 0


def slot_utc(spec: JobSpec, slot: int) -> str | None:
    """A slot of this job's schedule as a UTC time (an interval's slots count periods since the epoch); None
    for one no calendar holds (a record written under another schedule than the file's now)."""
    try:
        return _utc(spec.schedule.instant(slot), _with_ms(spec))
    except (ValueError, OverflowError, OSError):
        return None


def upcoming(spec: JobSpec, wall: float, count: int) -> list[dict[str, Any]]:
    """The next `count` slots after `wall`: instant in UTC, in the job's zone (cron), and its jitter."""
    schedule = spec.schedule
    with_ms = _with_ms(spec)
    zone = ZoneInfo(schedule.tz) if isinstance(schedule, Cron) and schedule.tz != "UTC" else None
    out = []
    for slot in next_instants(schedule, wall, count):
        instant = schedule.instant(slot)
        jitter = round(jitter_offset_s(spec.name, slot, spec.jitter_s), 3)
        item: dict[str, Any] = {"slot": slot, "unix_s": instant, "utc": _utc(instant, with_ms)}
        if zone is not None:
            item["local"] = datetime.fromtimestamp(instant, zone).strftime("%Y-%m-%d %H:%M:%S %Z (%z)")
            note = dst_note(instant, zone)
            if note:
                item["dst"] = note
        if spec.jitter_s:
            item["jitter_s"] = jitter
        out.append(item)
    return out


def dst_note(instant: float, zone: ZoneInfo) -> str:
    """Says so when an instant is where the schedule's DST rule (core/schedule.py) shows: the spring-forward
    transition (a skipped local time runs there, once), or a local time that the fall back repeats (run once)."""
    here = datetime.fromtimestamp(instant, zone)
    before = datetime.fromtimestamp(instant - 1, zone)
    if (here.utcoffset() or ZERO) > (before.utcoffset() or ZERO):
        jumped = before.replace(tzinfo=None) + timedelta(seconds=1)
        return (f"clocks go from {jumped:%H:%M} to {here:%H:%M} here: a local time they skip runs at this "
                f"instant, once")
    other = here.replace(fold=1 - here.fold)
    if other.timestamp() != here.timestamp():
        return f"{here:%H:%M:%S} happens twice today (clocks go back): runs the first time only"
    return ""


def describe_instant(item: dict[str, Any]) -> str:
    text = item["utc"]
    if "local" in item:
        text += f"  {item['local']}"
    if "jitter_s" in item:
        text += f"  +{item['jitter_s']:.3f} s jitter"
    if "dst" in item:
        text += f"  [{item['dst']}]"
    return text


def show_next(jobs: list[tuple[JobSpec, JobFn]], wall: float, count: int, *, as_json: bool) -> int:
    if not 1 <= count <= 1000:
        raise ConfigError(f"--count must be from 1 to 1000 (got {count})")
    listing: list[dict[str, Any]] = [{"name": spec.name, "callable": spec.target if isinstance(spec.target, str) else None,
                "schedule": describe_schedule(spec), "next": upcoming(spec, wall, count)} for spec, _fn in jobs]
    if as_json:
        print(json.dumps({"after_unix_s": wall, "after": _utc(wall, wall != math.floor(wall)), "jobs": listing},
                         indent=2))
        return 0
    print(f"next instants after {_utc(wall, wall != math.floor(wall))}")
    for job in listing:
        print(f"{job['name']}: {job['schedule']}" + (f" -> {job['callable']}" if job["callable"] else ""))
        for item in job["next"]:
            print(f"  {describe_instant(item)}")
    return 0


# --- per-job records in etcd, for `singleton status` -------------------------------------------------------------
def recorded_jobs(backend: Backend, config: Config, timeout_s: float) -> list[str]:
    """The names of the jobs that have a run record under `<prefix>/<name>/jobs/`."""
    start = jobs_prefix(config)
    names = {kv.key[len(start):].split("/", 1)[0] for kv in backend.get_prefix(start, timeout_s)
             if kv.key[len(start):].endswith("/run") and kv.key[len(start):].count("/") == 1}
    return sorted(names)


def jobs_status(backend: Backend, config: Config, specs: list[JobSpec], *, timeout_s: float = 3.0,
                now: float | None = None, count: int = 3) -> list[dict[str, Any]]:
    """Every job of the file (with its next instants) and every job with a record in etcd (with its last run)."""
    from singleton.ops.history import read_runs

    wall = time.time() if now is None else now
    by_name = {spec.name: spec for spec in specs}
    names = list(by_name) + [n for n in recorded_jobs(backend, config, timeout_s) if n not in by_name]
    out = []
    for name in names:
        record, runs = read_runs(backend, config, 1, timeout_s, job=name)
        spec = by_name.get(name)
        last = runs[0] if runs else None
        out.append({
            "name": name, "in_jobs_file": spec is not None,
            "schedule": describe_schedule(spec) if spec else None,
            "last_claimed_slot": record.slot if record else None,
            "last_claimed_utc": slot_utc(spec, record.slot) if spec and record else None,
            "last_run": None if last is None else {"slot": last.slot, "outcome": last.outcome,
                                                   "replica_id": last.replica_id,
                                                   "duration_s": round(last.duration_s, 6)},
            "next": upcoming(spec, wall, count) if spec else [],
        })
    return out


def describe_job_status(job: dict[str, Any]) -> str:
    parts = [job["schedule"] or "not in the jobs file"]
    if job["last_claimed_slot"] is None:
        parts.append("no run recorded")
    else:
        when = f" ({job['last_claimed_utc']})" if job.get("last_claimed_utc") else ""
        parts.append(f"last claimed slot {job['last_claimed_slot']}{when}")
    last = job["last_run"]
    if last is not None:
        parts.append(f"last finished run: slot {last['slot']} {last['outcome']} on {last['replica_id']}")
    if job["next"]:
        parts.append("next " + ", ".join(describe_instant(item) for item in job["next"]))
    if job.get("group"):  # sharding
        parts.insert(0, f"group {job['group']}, led by {job['group_leader'] or 'nobody now'}")
    return f"job {job['name']}: " + "; ".join(parts)
