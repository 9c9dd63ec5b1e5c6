"""Operator control of jobs (pause, resume, skip-next, trigger), without I/O: the keys, the edits an operator's
command makes to a job's control record, and the leader's in-memory view of every job's record (ControlState).

Each job has one control record (proto/singleton/v1/control.proto, JobControl) and a ring of control events. Writers
(the CLI, the admin API) edit the record in a compare-and-swap transaction that also writes the event; the leader
watches the records and compares each one's mod revision in every claim of that job, so a pause that etcd has
acknowledged stops every claim made after it, whether or not the leader's watch has delivered it yet.
"""
from __future__ import annotations

import re
import threading
import uuid
from dataclasses import dataclass

from google.protobuf.message import DecodeError

from singleton.core.config import Config
from singleton.core.errors import ConfigError
from singleton.v1.control_pb2 import ControlEvent, JobControl, Trigger

__all__ = ["ControlEvent", "JobControl", "Trigger", "ControlState", "EVENTS_SIZE", "control_key", "control_prefix",
           "events_prefix", "event_key", "job_of_key", "parse_duration", "decode_control", "decode_event",
           "pause", "resume", "skip_next", "trigger", "consume_skip", "settle_trigger"]

EVENTS_SIZE = 100  # control events kept per job (a ring, so etcd does not grow)


def control_prefix(config: Config) -> str:
    """Every job's control record starts with this (the leader watches it)."""
    return f"{config.prefix}/{config.name}/control"


def control_key(config: Config, job: str | None) -> str:
    """`job`: a named job; None or "": the single unnamed job of `run --job`."""
    return control_prefix(config) + (f"/{job}" if job else "")


def job_of_key(config: Config, key: str) -> str | None:
    """The job a control key belongs to ("" for the unnamed job); None for a key that is no control record."""
    base = control_prefix(config)
    if key == base:
        return ""
    if key.startswith(base + "/") and "/" not in key[len(base) + 1:]:
        return key[len(base) + 1:]
    return None


def events_prefix(config: Config, job: str | None) -> str:
    base = f"{config.prefix}/{config.name}"
    return f"{base}/jobs/{job}/events/" if job else f"{base}/events/"


def event_key(config: Config, job: str | None, seq: int) -> str:
    return f"{events_prefix(config, job)}{seq % EVENTS_SIZE}"


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
_UNIT_S = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(text: str) -> float:
    """`90`, `90s`, `15m`, `2h`, `1d` -> seconds (> 0)."""
    match = _DURATION.match(text)
    if not match or float(match.group(1)) <= 0:
        raise ConfigError(f"bad duration {text!r}: use a positive number with s, m, h or d (e.g. 90s, 15m, 2h)")
    return float(match.group(1)) * _UNIT_S[match.group(2)]


def decode_control(data: bytes) -> JobControl:
    try:
        return JobControl.FromString(data)
    except DecodeError:
        return JobControl()


def decode_event(data: bytes) -> ControlEvent | None:
    try:
        return ControlEvent.FromString(data)
    except DecodeError:
        return None


# --- the edits: each returns the new record and the event that goes with it (same transaction) --------------------
def _event(control: JobControl, kind: str, by: str, reason: str, at: float, **fields: object) -> ControlEvent:
    control.event_seq += 1
    return ControlEvent(seq=control.event_seq, kind=kind, by=by, reason=reason, at_unix_s=at, **fields)  # type: ignore[arg-type]


def _copy(control: JobControl) -> JobControl:
    new = JobControl()
    new.CopyFrom(control)
    return new


def pause(control: JobControl, by: str, reason: str, at: float, for_s: float | None) -> tuple[JobControl, ControlEvent]:
    new = _copy(control)
    until = at + for_s if for_s else 0.0
    new.paused, new.reason, new.by, new.at_unix_s, new.until_unix_s = True, reason, by, at, until
    return new, _event(new, "pause", by, reason, at, until_unix_s=until)


def resume(control: JobControl, by: str, reason: str, at: float) -> tuple[JobControl, ControlEvent]:
    new = _copy(control)
    new.paused, new.reason, new.by, new.at_unix_s, new.until_unix_s = False, reason, by, at, 0.0
    return new, _event(new, "resume", by, reason, at)


def skip_next(control: JobControl, by: str, reason: str, at: float) -> tuple[JobControl, ControlEvent]:
    new = _copy(control)
    new.skip_next, new.skip_by, new.skip_reason = True, by, reason
    return new, _event(new, "skip-next", by, reason, at)


def trigger(control: JobControl, by: str, reason: str, at: float,
            trigger_id: str | None = None) -> tuple[JobControl, ControlEvent]:
    new = _copy(control)
    tid = trigger_id or uuid.uuid4().hex[:12]
    new.triggers.append(Trigger(id=tid, by=by, reason=reason, at_unix_s=at))
    return new, _event(new, "trigger", by, reason, at, trigger_id=tid)


def consume_skip(control: JobControl, slot: int, token: int, at: float) -> tuple[JobControl, ControlEvent]:
    """The leader's claim of `slot` that consumes the skip-next request (written in that claim's transaction)."""
    new = _copy(control)
    by, reason = new.skip_by, new.skip_reason
    new.skip_next, new.skip_by, new.skip_reason, new.skipped_slot = False, "", "", slot
    return new, _event(new, "skipped", by, reason, at, slot=slot, fencing_token=token)


def settle_trigger(control: JobControl, trigger_id: str, kind: str, why: str, token: int, at: float,
                   run_seq: int = 0) -> tuple[JobControl, ControlEvent]:
    """The leader's answer to a trigger: `triggered` (claimed as run `run_seq`) or `trigger-refused` (`why`)."""
    new = _copy(control)
    asked = next((t for t in new.triggers if t.id == trigger_id), Trigger(id=trigger_id))
    kept = [t for t in new.triggers if t.id != trigger_id]
    del new.triggers[:]
    new.triggers.extend(kept)
    reason = asked.reason if kind == "triggered" else why
    return new, _event(new, kind, asked.by, reason, at, slot=run_seq, trigger_id=trigger_id, fencing_token=token)


# --- the leader's view ---------------------------------------------------------------------------------------------
@dataclass
class _Seen:
    event_revision: int  # the last change we know of (a delete too): older news is ignored
    mod_revision: int  # what a claim compares: the key's mod revision, 0 when absent
    control: JobControl


class ControlState:
    """Every job's control record as the leader last saw it (watch events, reads, its own writes). Thread-safe: the
    watch thread applies, the tick loop asks."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._jobs: dict[str, _Seen] = {}
        self.version = 0  # bumped on every change, so the loop can tell there is news

    def apply(self, job: str, revision: int, value: bytes | None) -> bool:
        """A record at `revision` (None: deleted at it). Older than what we know: ignored. True when it was news."""
        with self._lock:
            seen = self._jobs.get(job)
            if seen is not None and revision <= seen.event_revision:
                return False
            control = decode_control(value) if value is not None else JobControl()
            self._jobs[job] = _Seen(revision, revision if value is not None else 0, control)
            self.version += 1
            return True

    def revision(self, job: str) -> int:
        with self._lock:
            seen = self._jobs.get(job)
            return seen.mod_revision if seen is not None else 0

    def control(self, job: str) -> JobControl:
        with self._lock:
            seen = self._jobs.get(job)
            return _copy(seen.control) if seen is not None else JobControl()

    def paused(self, job: str, wall_now: float) -> bool:
        """Paused, and its --for (if any) not yet over by `wall_now` (the leader's wall clock: expiry is coarse)."""
        with self._lock:
            seen = self._jobs.get(job)
        if seen is None or not seen.control.paused:
            return False
        return not seen.control.until_unix_s or wall_now < seen.control.until_unix_s

    def skip_pending(self, job: str) -> bool:
        with self._lock:
            seen = self._jobs.get(job)
            return bool(seen is not None and seen.control.skip_next)

    def triggers(self, job: str) -> list[Trigger]:
        with self._lock:
            seen = self._jobs.get(job)
            return list(seen.control.triggers) if seen is not None else []

    def skipped(self, job: str, slot: int) -> bool:
        """`slot` was claimed to consume a skip-next request: no leader runs it."""
        with self._lock:
            seen = self._jobs.get(job)
            return bool(seen is not None and slot != 0 and seen.control.skipped_slot == slot)

    def any_triggers(self) -> bool:
        with self._lock:
            return any(s.control.triggers for s in self._jobs.values())

    def paused_jobs(self) -> list[str]:
        """Jobs whose record says paused (expired or not): few, so the loop's per-pass work does not grow with N."""
        with self._lock:
            return [job for job, s in self._jobs.items() if s.control.paused]
