"""When a job's slots are due: intervals anchored to the epoch, and 6-field cron (seconds first) in a time zone.

Pure arithmetic, no I/O and no clock of its own: every replica that is given the same schedule computes the same
instants, so a new leader continues the series where the old one stopped.

A *slot* is an int that names one instant of the series, and slots only grow:
- `every=E`: slot k is due at k * E seconds after the Unix epoch. With E = 1, slot k is the Unix second k, exactly the
  every-second ticker's numbering.
- `cron=...`: slot s is the Unix second of a fire time. Fire times are local wall times in the schedule's zone
  (UTC unless one is given). Daylight saving time, chosen and documented:
  * spring forward: a local time that does not exist that day (02:30 when clocks jump 02:00 -> 03:00) runs **once, at
    the transition** (03:00 local), as croniter computes it;
  * fall back: a local time that happens twice (02:30 when clocks go 03:00 -> 02:00) runs **once, the first time**.
    This also holds for expressions that fire every few minutes: the repeated hour runs no second time. Use `every=`
    for "every N seconds of elapsed time", which knows no time zones.
"""
from __future__ import annotations

import hashlib
import math
import threading
from dataclasses import dataclass
from functools import cached_property
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Protocol
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from singleton.core.errors import ConfigError

if TYPE_CHECKING:  # imported where a cron schedule is made: croniter and dateutil are ~2 MB a replica without one
    from croniter import croniter

MIN_INTERVAL_S = 0.1
# Interval lengths are whole milliseconds, so k * E is exact and every replica computes the same instant.
_MS = 1000
# A cron expression that fires less often than this is refused (a typo like "0 0 0 31 2 *" never fires).
_CRON_SEARCH_YEARS = 5
# A slot must start before this much after its instant (and before the next slot): later, it is skipped, never run late.
MAX_LATENESS_S = 1.0


class Schedule(Protocol):
    def instant(self, slot: int) -> float:
        """The slot's wall time, Unix seconds."""

    def slot_after(self, slot: int) -> int:
        """The next slot of the series."""

    def first_after(self, wall: float) -> int:
        """The first slot whose instant is strictly after `wall`."""

    def last_at_or_before(self, wall: float) -> int:
        """The last slot whose instant is at or before `wall`."""

    def describe(self) -> str: ...


@dataclass(frozen=True)
class Interval:
    """Slots every `period_ms` milliseconds, anchored to the Unix epoch."""

    period_ms: int

    @property
    def period_s(self) -> float:
        return self.period_ms / _MS

    def instant(self, slot: int) -> float:
        return slot * self.period_ms / _MS

    def slot_after(self, slot: int) -> int:
        return slot + 1

    def first_after(self, wall: float) -> int:
        return self.last_at_or_before(wall) + 1

    def last_at_or_before(self, wall: float) -> int:
        slot = math.floor(wall * _MS / self.period_ms)
        # Float rounding may put us one off at an exact boundary; settle it on the exact instants.
        while self.instant(slot) > wall:
            slot -= 1
        while self.instant(slot + 1) <= wall:
            slot += 1
        return slot

    def describe(self) -> str:
        return f"every {self.period_s:g} s"


@dataclass(frozen=True)
class Cron:
    """6-field cron, seconds first (`*/5 * * * * *`), in an IANA zone."""

    expression: str
    tz: str = "UTC"

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.tz)

    @cached_property
    def _walker(self) -> tuple[croniter, threading.Lock]:
        """One croniter per schedule, moved with set_current: building one parses the expression again (~1 ms, the
        loop's largest cost with many cron jobs); its walking state is all reset by set_current."""
        from croniter import croniter

        return (croniter(self.expression, datetime.now(tz=self.zone), second_at_beginning=True,
                         max_years_between_matches=_CRON_SEARCH_YEARS), threading.Lock())

    def instant(self, slot: int) -> float:
        return float(slot)

    def slot_after(self, slot: int) -> int:
        return self.first_after(float(slot))

    def first_after(self, wall: float) -> int:
        zone = self.zone
        it, lock = self._walker
        with lock:
            it.set_current(datetime.fromtimestamp(math.floor(wall), tz=zone), force=True)
            for _ in range(10_000):  # bounded: at most the repeats of one fall-back hour are skipped
                fire: datetime = it.get_next(datetime)
                if not _second_occurrence(fire, zone):
                    return int(fire.timestamp())
        raise ConfigError(f"cron {self.expression!r}: no fire time found after {wall}")

    def slots_between(self, after: int, before: int, limit: int) -> list[int]:
        """The slots s with after < s < before, at most `limit` of them (counting what a takeover missed)."""
        zone = self.zone
        slots: list[int] = []
        it, lock = self._walker
        with lock:
            it.set_current(datetime.fromtimestamp(after, tz=zone), force=True)
            while len(slots) < limit:
                fire: datetime = it.get_next(datetime)
                if fire.timestamp() >= before:
                    break
                if not _second_occurrence(fire, zone):
                    slots.append(int(fire.timestamp()))
        return slots

    def last_at_or_before(self, wall: float) -> int:
        zone = self.zone
        it, lock = self._walker
        with lock:
            it.set_current(datetime.fromtimestamp(math.floor(wall) + 1, tz=zone), force=True)
            for _ in range(10_000):
                fire: datetime = it.get_prev(datetime)
                if not _second_occurrence(fire, zone) and fire.timestamp() <= wall:
                    return int(fire.timestamp())
        raise ConfigError(f"cron {self.expression!r}: no fire time found before {wall}")

    def describe(self) -> str:
        return f"cron {self.expression!r} ({self.tz})"


def _second_occurrence(fire: datetime, zone: ZoneInfo) -> bool:
    """True for the second pass of a local time repeated when clocks fall back (it already ran the first time)."""
    naive = fire.replace(tzinfo=None)
    first = naive.replace(tzinfo=zone, fold=0)
    return first.timestamp() != fire.timestamp()


def parse_schedule(every: float | None = None, cron: str | None = None, tz: str | None = None) -> Schedule:
    """`every` seconds, or a 6-field `cron` (seconds first) in zone `tz`; neither means every second."""
    if every is not None and cron is not None:
        raise ConfigError("give either every or cron, not both")
    if cron is None:
        if tz is not None:
            raise ConfigError("tz applies to cron schedules only (intervals are anchored to the epoch)")
        return parse_interval(1.0 if every is None else every)
    return parse_cron(cron, tz or "UTC")


def parse_interval(every: float) -> Interval:
    if isinstance(every, bool) or not isinstance(every, (int, float)) or not math.isfinite(every):
        raise ConfigError(f"every must be a number of seconds (got {every!r})")
    if every < MIN_INTERVAL_S:
        raise ConfigError(f"every must be at least {MIN_INTERVAL_S:g} s (got {every:g})")
    period_ms = round(every * _MS)
    if abs(period_ms - every * _MS) > 1e-6:
        raise ConfigError(f"every must be a whole number of milliseconds (got {every!r})")
    return Interval(period_ms)


def parse_cron(expression: str, tz: str = "UTC") -> Cron:
    fields = expression.split()
    if len(fields) != 6:
        raise ConfigError(f"cron {expression!r} must have 6 fields, seconds first: "
                          f"'SEC MIN HOUR DAY MONTH WEEKDAY' (got {len(fields)})")
    from croniter import croniter

    if not croniter.is_valid(expression, second_at_beginning=True):
        raise ConfigError(f"cron {expression!r} is not a valid expression")
    try:
        ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(f"unknown time zone {tz!r} (expected an IANA name like Europe/Berlin)") from None
    schedule = Cron(" ".join(fields), tz)
    try:
        schedule.first_after(datetime.now(timezone.utc).timestamp())
    except Exception as err:  # noqa: BLE001 - croniter raises its own errors for expressions that never fire
        raise ConfigError(f"cron {expression!r} never fires ({err})") from None
    return schedule


def max_lateness_s(schedule: Schedule, slot: int) -> float:
    """How late a slot may still start: within its second, and before the next slot is due."""
    return min(MAX_LATENESS_S, schedule.instant(schedule.slot_after(slot)) - schedule.instant(slot))


def jitter_offset_s(job_name: str, slot: int, jitter_s: float) -> float:
    """A delay in [0, jitter_s) that every replica computes alike for this job and slot (no randomness, so a new
    leader starts the same slot at the same moment)."""
    if jitter_s <= 0:
        return 0.0
    digest = hashlib.blake2b(f"{job_name}\0{slot}".encode(), digest_size=8).digest()
    return jitter_s * (int.from_bytes(digest, "big") / 2 ** 64)


def due_at(schedule: Schedule, job_name: str, slot: int, jitter_s: float = 0.0) -> float:
    """When the slot's run should start (wall time): its instant plus its jitter."""
    return schedule.instant(slot) + jitter_offset_s(job_name, slot, jitter_s)


def next_instants(schedule: Schedule, wall: float, count: int) -> list[int]:
    """The next `count` slots after `wall`: what `singleton next` prints, identical on every replica."""
    slots: list[int] = []
    slot = schedule.first_after(wall)
    for _ in range(max(0, count)):
        slots.append(slot)
        slot = schedule.slot_after(slot)
    return slots
