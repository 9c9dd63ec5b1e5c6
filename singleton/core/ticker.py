"""Slot arithmetic for the every-second ticker. No I/O, no sleeping: the runner does that.

A slot is a whole Unix second. Slots are named by the wall clock but waited for on the monotonic
clock, and each plan is made afresh from "now", so there is no cumulative drift and no catch-up burst.
Slot numbers only ever grow, so a backward wall-clock step cannot make a slot run twice.
"""
from __future__ import annotations

import enum
import math
from dataclasses import dataclass

from singleton.core.schedule import Schedule, jitter_offset_s

# A tick must start inside its own second; a slot woken later than this is skipped, never run late.
MAX_LATENESS_S = 1.0
# The run record's claim for a slot is made this long before the slot is due, so the job starts on time.
CLAIM_AHEAD_S = 0.25
# A wall clock that moved this much more or less than the monotonic one over one wait was stepped.
CLOCK_STEP_THRESHOLD_S = 0.5


@dataclass(frozen=True)
class SlotPlan:
    slot: int
    wake_at: float  # monotonic time at which the slot is due
    planned_wall: float
    planned_mono: float
    instant: float | None = None  # the slot's wall time under its schedule (None: the slot is a Unix second)

    @property
    def scheduled_at(self) -> float:
        return float(self.slot) if self.instant is None else self.instant


class Verdict(enum.Enum):
    RUN = "run"
    WAIT = "wait"
    TOO_LATE = "too_late"


@dataclass(frozen=True)
class Due:
    verdict: Verdict
    wait_s: float = 0.0
    lateness_s: float = 0.0
    clock_step_s: float = 0.0  # how far the wall clock jumped relative to the monotonic clock during the wait


def first_plan(wall_now: float, mono_now: float, handover_last_slot: int | None,
               record_slot: int | None = None) -> SlotPlan:
    """The first slot of a new term, due within a second whatever the predecessor's clock said.

    Normally the next whole second: never one the predecessor may already have run. After a graceful
    handover the predecessor told us the last slot it ran: the slot after it may be the current second,
    and running it (slightly late) is what makes a graceful handover miss nothing. If that slot is still
    ahead of our wall clock (the predecessor's clock runs fast, or was stepped), the slot *number* follows
    on from the handover so no number repeats, but it is due at our next whole second, as after a
    backward step of our own clock: waiting for our clock to catch up would stall the cluster.

    `record_slot`, the last slot claimed in the run record, works the same way: numbering follows on after it
    (no slot is claimed twice, whatever our clock says), and the slot is still due at our next whole second.
    """
    plan = _first_plan(wall_now, mono_now, handover_last_slot)
    if record_slot is not None and plan.slot <= record_slot:
        return SlotPlan(record_slot + 1, plan.wake_at, wall_now, mono_now)
    return plan


def _first_plan(wall_now: float, mono_now: float, handover_last_slot: int | None) -> SlotPlan:
    current = math.floor(wall_now)
    if handover_last_slot is None or handover_last_slot + 1 < current:
        return plan_slot(current + 1, wall_now, mono_now)
    if handover_last_slot + 1 == current:
        return plan_slot(current, wall_now, mono_now)
    return SlotPlan(handover_last_slot + 1, mono_now + (current + 1 - wall_now), wall_now, mono_now)


def plan_slot(slot: int, wall_now: float, mono_now: float) -> SlotPlan:
    """Plan a given slot: due when the wall clock reaches it, measured as a monotonic delay."""
    return SlotPlan(slot, mono_now + (slot - wall_now), wall_now, mono_now)


def plan_next(last_slot: int, wall_now: float, mono_now: float) -> SlotPlan:
    """The slot after `last_slot`: the next whole wall second, and never a slot number already used.

    After a backward wall-clock step the wall second is behind `last_slot`; we keep one tick per
    real second at the wall clock's phase, numbering on from `last_slot`.
    """
    next_wall_second = math.floor(wall_now) + 1
    delay = next_wall_second - wall_now
    return SlotPlan(max(last_slot + 1, next_wall_second), mono_now + delay, wall_now, mono_now)


def check_due(plan: SlotPlan, wall_now: float, mono_now: float, max_lateness_s: float = MAX_LATENESS_S) -> Due:
    step = (wall_now - plan.planned_wall) - (mono_now - plan.planned_mono)
    step = step if abs(step) >= CLOCK_STEP_THRESHOLD_S else 0.0
    if mono_now < plan.wake_at:
        return Due(Verdict.WAIT, wait_s=plan.wake_at - mono_now, clock_step_s=step)
    lateness = mono_now - plan.wake_at
    if lateness >= max_lateness_s:
        return Due(Verdict.TOO_LATE, lateness_s=lateness, clock_step_s=step)
    return Due(Verdict.RUN, lateness_s=lateness, clock_step_s=step)


# --- any schedule (core.schedule): the same rules, with the schedule's instants instead of whole seconds -----------
def schedule_plan(schedule: Schedule, slot: int, due_slot: int, wall_now: float, mono_now: float, job: str = "",
                  jitter_s: float = 0.0) -> SlotPlan:
    """Slot number `slot`, due at `due_slot`'s instant (plus the slot's jitter) by our wall clock, waited for on the
    monotonic one. The two differ only when numbering follows a predecessor whose clock ran ahead."""
    due = schedule.instant(due_slot) + jitter_offset_s(job, slot, jitter_s)
    return SlotPlan(slot, mono_now + (due - wall_now), wall_now, mono_now, schedule.instant(slot))


def first_schedule_plan(schedule: Schedule, wall_now: float, mono_now: float, handover_next: int | None,
                        record_slot: int | None = None, job: str = "", jitter_s: float = 0.0,
                        unclaimed_current_within_s: float | None = None) -> SlotPlan:
    """`first_plan` for any schedule. `handover_next` is the first slot the predecessor did not start (from its
    handover): if it is the slot whose instant has just passed, it runs now (late, but not missed); if it is ahead
    of our clock (the predecessor's clock was ahead), numbering follows it and it is due at our next instant.
    `record_slot` (the last slot claimed in the run record) only ever pushes numbering on, never the due time.

    `unclaimed_current_within_s` (a takeover that was not a handover, with the run record read after the
    predecessor's key was gone): the slot whose instant has just passed runs now, like a handover's, when the record
    shows nobody claimed it (`record_slot` before it) and it is less than this late. Every run is claimed in the
    record before it starts, and our claim compares the record's revision, so nobody ran it and nobody can."""
    nxt = schedule.first_after(wall_now)
    slot = due_slot = nxt
    current = schedule.last_at_or_before(wall_now)
    if handover_next is not None:
        if handover_next == current:
            slot = due_slot = current
        elif handover_next > current:
            slot = handover_next
    elif (unclaimed_current_within_s is not None and record_slot is not None and record_slot < current
          and wall_now - schedule.instant(current) - jitter_offset_s(job, current, jitter_s)
          < unclaimed_current_within_s):
        slot = due_slot = current
    if record_slot is not None and slot <= record_slot:
        slot = schedule.slot_after(record_slot)
    return schedule_plan(schedule, slot, due_slot, wall_now, mono_now, job, jitter_s)


def next_schedule_plan(schedule: Schedule, last_slot: int, wall_now: float, mono_now: float, job: str = "",
                       jitter_s: float = 0.0, handled_wall: float | None = None) -> SlotPlan:
    """`plan_next` for any schedule: due at our next instant, numbered never below the slot after `last_slot`.

    `handled_wall`: the wall instant the handled slot was due at. The monotonic clock decides when a slot is due, so
    the wall clock may still read a hair before that instant (float rounding, a slewing clock); the next slot is then
    the one after it, never the same instant again."""
    nxt = schedule.first_after(wall_now if handled_wall is None else max(wall_now, handled_wall))
    return schedule_plan(schedule, max(schedule.slot_after(last_slot), nxt), nxt, wall_now, mono_now, job, jitter_s)
