"""The election state machine: every transition in one table, an illegal event raises (as h11's _state.py).

Free of I/O and threads: the runner feeds it events and a clock, and asks it whether a tick may run.

    FOLLOWER --campaign--> CANDIDATE --won--> LEADER --step_down--> STEPPING_DOWN --stepped_down--> FOLLOWER
                           CANDIDATE --lost / campaign_failed--> FOLLOWER
    STEPPING_DOWN --step_down--> STEPPING_DOWN   (a graceful step-down turned forced: the lease got into trouble)
    FOLLOWER, CANDIDATE, STEPPING_DOWN --stop--> STOPPED   (a LEADER must step down first; STOPPED is final)
"""
from __future__ import annotations

import enum
from dataclasses import dataclass

from singleton.core.errors import IllegalTransition
from singleton.core.lease import LeaseKeeper, StepDownReason


class Role(enum.Enum):
    FOLLOWER = "follower"
    CANDIDATE = "candidate"
    LEADER = "leader"
    STEPPING_DOWN = "stepping_down"
    STOPPED = "stopped"


class Event(enum.Enum):
    CAMPAIGN = "campaign"
    WON = "won"
    LOST = "lost"
    CAMPAIGN_FAILED = "campaign_failed"
    STEP_DOWN = "step_down"
    STEPPED_DOWN = "stepped_down"
    STOP = "stop"


_TRANSITIONS: dict[tuple[Role, Event], Role] = {
    (Role.FOLLOWER, Event.CAMPAIGN): Role.CANDIDATE,
    (Role.CANDIDATE, Event.WON): Role.LEADER,
    (Role.CANDIDATE, Event.LOST): Role.FOLLOWER,
    (Role.CANDIDATE, Event.CAMPAIGN_FAILED): Role.FOLLOWER,
    (Role.LEADER, Event.STEP_DOWN): Role.STEPPING_DOWN,
    (Role.STEPPING_DOWN, Event.STEP_DOWN): Role.STEPPING_DOWN,
    (Role.STEPPING_DOWN, Event.STEPPED_DOWN): Role.FOLLOWER,
    (Role.FOLLOWER, Event.STOP): Role.STOPPED,
    (Role.CANDIDATE, Event.STOP): Role.STOPPED,
    (Role.STEPPING_DOWN, Event.STOP): Role.STOPPED,
}


@dataclass(frozen=True)
class Term:
    """One leadership term: its fencing token (the leader key's create revision) and its lease."""

    fencing_token: int
    keeper: LeaseKeeper


class Election:
    def __init__(self) -> None:
        self.role = Role.FOLLOWER
        self.term: Term | None = None
        self.step_down_reason: StepDownReason | None = None

    def _fire(self, event: Event) -> Role:
        try:
            new_role = _TRANSITIONS[(self.role, event)]
        except KeyError:
            raise IllegalTransition(f"event {event.value!r} is not allowed in role {self.role.value!r}") from None
        self.role = new_role
        return new_role

    def campaign(self) -> None:
        self._fire(Event.CAMPAIGN)

    def won(self, fencing_token: int, keeper: LeaseKeeper) -> Term:
        if fencing_token <= 0:
            raise IllegalTransition(f"fencing token must be positive, got {fencing_token}")
        self._fire(Event.WON)
        self.term = Term(fencing_token, keeper)
        self.step_down_reason = None
        return self.term

    def lost(self) -> None:
        self._fire(Event.LOST)

    def campaign_failed(self) -> None:
        self._fire(Event.CAMPAIGN_FAILED)

    def step_down(self, reason: StepDownReason) -> None:
        self._fire(Event.STEP_DOWN)
        self.step_down_reason = reason

    def stepped_down(self) -> None:
        self._fire(Event.STEPPED_DOWN)
        self.term = None

    def stop(self) -> None:
        self._fire(Event.STOP)
        self.term = None

    def check(self, now: float) -> StepDownReason | None:
        """For a leader: None while it may keep ticking, else why it must step down. Cheap; call before every tick."""
        if self.role is not Role.LEADER or self.term is None:
            raise IllegalTransition(f"only a leader has a lease to check (role {self.role.value!r})")
        return self.term.keeper.step_down_reason(now)

    def may_tick(self, now: float) -> bool:
        return self.role is Role.LEADER and self.term is not None and self.term.keeper.step_down_reason(now) is None
