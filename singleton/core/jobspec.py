"""One job's definition: its name, schedule and policies, validated before anything touches etcd.

The library (`@app.job(...)`) and the jobs file (`singleton run --jobs jobs.toml`) both build JobSpecs, so the rules
and the one-line errors ("job 'report': cron: ...") are the same in both.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

from singleton.core.errors import ConfigError
from singleton.core.schedule import Interval, Schedule, parse_schedule

_JOB_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._:-]{0,127}$")
OVERLAP_POLICIES = ("skip", "allow")
CATCH_UP_POLICIES = ("skip", "coalesce")


class JobSpecError(ConfigError):
    """A job's definition is invalid; the message names the job and the field."""

    def __init__(self, job: str, field_name: str, message: str) -> None:
        super().__init__(f"job {job!r}: {field_name}: {message}")
        self.job, self.field_name = job, field_name


@dataclass(frozen=True)
class JobSpec:
    name: str
    schedule: Schedule = field(default_factory=lambda: Interval(1000))
    target: Any = None  # the callable, or "module:fn" before it is imported
    jitter_s: float = 0.0
    overlap: str = "skip"  # skip: a slot due while a run of this job is going is skipped and counted
    max_instances: int = 1  # with overlap "allow": at most this many runs of this job at once
    timeout_s: float | None = None  # cancel a run after this long (then the hung-job rules apply)
    catch_up: str = "skip"
    catch_up_window_s: float = 60.0
    group: str | None = None  # sharding: the group whose leader runs this job (None: a group of its own)

    @property
    def group_name(self) -> str:
        """The group this job belongs to with sharding on."""
        return self.group if self.group is not None else self.name

    @property
    def every_second(self) -> bool:
        """The mission's default: one run per whole second."""
        return isinstance(self.schedule, Interval) and self.schedule.period_ms == 1000


def _number(job: str, name: str, value: Any, *, minimum: float = 0.0, strict: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise JobSpecError(job, name, f"must be a number of seconds (got {value!r})")
    if value < minimum or (strict and value == minimum):
        raise JobSpecError(job, name, f"must be {'>' if strict else '>='} {minimum:g} (got {value!r})")
    return float(value)


def build_job_spec(name: str, target: Any = None, *, every: float | None = None, cron: str | None = None,
                   tz: str | None = None, jitter: float = 0.0, overlap: str = "skip", max_instances: int | None = None,
                   timeout: float | None = None, catch_up: str = "skip", catch_up_window: float = 60.0,
                   group: str | None = None) -> JobSpec:
    """Validate one job's settings (seconds as plain numbers, as a user writes them) into a JobSpec."""
    if not isinstance(name, str) or not _JOB_NAME_RE.match(name):
        raise JobSpecError(str(name), "name", "must be 1-128 characters of letters, digits and . _ : - "
                           "(starting with a letter, digit or _)")
    try:
        schedule = parse_schedule(every, cron, tz)
    except ConfigError as err:
        field_name = "cron" if cron is not None else "every"
        if "time zone" in str(err) or str(err).startswith("tz"):
            field_name = "tz"
        raise JobSpecError(name, field_name, str(err)) from None
    jitter_s = _number(name, "jitter", jitter)
    if isinstance(schedule, Interval) and jitter_s >= schedule.period_s:
        raise JobSpecError(name, "jitter", f"must be shorter than the interval ({schedule.period_s:g} s)")
    if overlap not in OVERLAP_POLICIES:
        raise JobSpecError(name, "overlap", f"must be one of {', '.join(OVERLAP_POLICIES)} (got {overlap!r})")
    if max_instances is None:
        max_instances = 1
    if isinstance(max_instances, bool) or not isinstance(max_instances, int) or max_instances < 1:
        raise JobSpecError(name, "max_instances", f"must be a whole number >= 1 (got {max_instances!r})")
    if overlap == "skip" and max_instances != 1:
        raise JobSpecError(name, "max_instances", "needs overlap = \"allow\" (with \"skip\" one run at a time)")
    timeout_s = None if timeout is None else _number(name, "timeout", timeout, strict=True)
    if catch_up not in CATCH_UP_POLICIES:
        raise JobSpecError(name, "catch_up", f"must be one of {', '.join(CATCH_UP_POLICIES)} (got {catch_up!r})")
    window_s = _number(name, "catch_up_window", catch_up_window)
    if group is not None and (not isinstance(group, str) or not _JOB_NAME_RE.match(group)):
        raise JobSpecError(name, "group", "must be 1-128 characters of letters, digits and . _ : - (got "
                           f"{group!r})")
    return JobSpec(name, schedule, target, jitter_s, overlap, max_instances, timeout_s, catch_up, window_s, group)


def check_unique(specs: list[JobSpec]) -> None:
    seen: set[str] = set()
    for spec in specs:
        if spec.name in seen:
            raise JobSpecError(spec.name, "name", "is used by another job (job names must be unique)")
        seen.add(spec.name)


def default_job_name(fn: Any) -> str:
    """The function's qualified name, made into a valid job name (`<locals>` and the like dropped)."""
    raw = getattr(fn, "__qualname__", None) or getattr(type(fn), "__qualname__", "job")
    cleaned = re.sub(r"[^A-Za-z0-9._:-]", "", str(raw).replace(".<locals>", ""))
    return cleaned.lstrip(".:-")[:128] or "job"
