"""Run-record arithmetic, without I/O: what a takeover cost, what to catch up, how far the clocks disagree.

The run record (`<prefix>/<name>/run`, proto/singleton/v1/run.proto) names the last claimed slot. A new leader
numbers its slots after it, so slot numbers never go back, whatever its own clock says; the slots between the
record and the new leader's first slot were never claimed by anyone: that is what a takeover cost.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass

from singleton.core.schedule import Cron, Interval, Schedule

# A clock difference above this is reported (log and gauge) at a takeover.
SKEW_WARNING_S = 0.5


class CatchUp(enum.Enum):
    SKIP = "skip"  # the missed slots are counted and logged, not run
    COALESCE = "coalesce"  # one run right away stands in for the missed slots within the window


@dataclass(frozen=True)
class CatchUpPlan:
    missed_from: int = 0  # the slots nobody claimed: missed_from .. missed_to (none when missed_to < missed_from)
    missed_to: int = -1
    coalesce_from: int | None = None  # with COALESCE: the run stands in for coalesce_from .. missed_to
    beyond_window: int = 0  # missed slots older than the catch-up window (COALESCE only): counted, never run
    # Slot counts where slot numbers are not consecutive (cron: slots are Unix seconds); None: consecutive.
    missed_count: int | None = None
    coalesced_count: int | None = None

    @property
    def missed(self) -> int:
        return max(0, self.missed_to - self.missed_from + 1) if self.missed_count is None else self.missed_count

    @property
    def coalesced(self) -> int:
        if self.coalesce_from is None:
            return 0
        return self.missed_to - self.coalesce_from + 1 if self.coalesced_count is None else self.coalesced_count


def plan_catch_up(record_slot: int | None, first_slot: int, policy: CatchUp, window_s: float) -> CatchUpPlan:
    """After a takeover that was not a handover: the slots between the record and our first slot."""
    if record_slot is None or first_slot <= record_slot + 1:
        return CatchUpPlan()
    missed_from, missed_to = record_slot + 1, first_slot - 1
    if policy is CatchUp.SKIP:
        return CatchUpPlan(missed_from, missed_to)
    window_slots = max(1, int(window_s))
    coalesce_from = max(missed_from, missed_to - window_slots + 1)
    return CatchUpPlan(missed_from, missed_to, coalesce_from, coalesce_from - missed_from)


# Counting the missed fire times of a cron schedule walks them one by one; past this many the count is a lower bound.
CRON_CATCH_UP_LIMIT = 10_000


def plan_catch_up_for(schedule: Schedule, record_slot: int | None, first_slot: int, policy: CatchUp,
                      window_s: float) -> CatchUpPlan:
    """`plan_catch_up` for any schedule: the window holds the slots whose instants lie within `window_s` of the last
    missed one (for every second: the last int(window_s) slots, as before)."""
    if isinstance(schedule, Interval):
        if record_slot is None or first_slot <= record_slot + 1:
            return CatchUpPlan()
        missed_from, missed_to = record_slot + 1, first_slot - 1
        if policy is CatchUp.SKIP:
            return CatchUpPlan(missed_from, missed_to)
        window_slots = max(1, int(window_s * 1000 // schedule.period_ms))
        coalesce_from = max(missed_from, missed_to - window_slots + 1)
        return CatchUpPlan(missed_from, missed_to, coalesce_from, coalesce_from - missed_from)
    if record_slot is None:
        return CatchUpPlan()
    if isinstance(schedule, Cron):
        missed = schedule.slots_between(record_slot, first_slot, CRON_CATCH_UP_LIMIT)
    else:
        missed = []
        slot = schedule.slot_after(record_slot)
        while slot < first_slot and len(missed) < CRON_CATCH_UP_LIMIT:
            missed.append(slot)
            slot = schedule.slot_after(slot)
    if not missed:
        return CatchUpPlan()
    if policy is CatchUp.SKIP:
        return CatchUpPlan(missed[0], missed[-1], missed_count=len(missed))
    last_instant = schedule.instant(missed[-1])
    inside = [s for s in missed if schedule.instant(s) > last_instant - window_s] or missed[-1:]
    return CatchUpPlan(missed[0], missed[-1], inside[0], len(missed) - len(inside), len(missed), len(inside))


def handover_skew_s(handover_written_at: float, local_wall_when_seen: float) -> float:
    """The predecessor's clock minus ours, from a handover record we were woken by within milliseconds of
    its writing (the watch delivers the delete at once): exact up to that delivery time."""
    return handover_written_at - local_wall_when_seen


def record_skew_lower_bound_s(record_claimed_at: float, local_wall_now: float) -> float:
    """After a crash we do not know when the last claim was made, only that it was before now: a claim time
    ahead of our clock proves the claimer's clock was ahead by at least that much. 0 when nothing is proven."""
    return max(0.0, record_claimed_at - local_wall_now)


def history_index(seq: int, size: int) -> int:
    """The ring slot of the history entry of the run claimed with `seq`: etcd keeps `size` entries, never more."""
    return seq % size
