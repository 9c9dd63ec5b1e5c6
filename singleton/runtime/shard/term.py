"""One group's term with sharding: its own Election, fencing token and Leadership (the group's jobs only), on the
member's shared lease. It runs on a thread of its own from the won campaign to the end of the step-down."""
from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING

from singleton.core.election import Election, Role, Term
from singleton.core.lease import StepDownReason
from singleton.core.records import Handover
from singleton.runtime.leadership import Leadership, TermOutcome
from singleton.runtime.shard.metrics import group_stepped_down

if TYPE_CHECKING:
    from singleton.runtime.shard.sharded import ShardedRun

log = logging.getLogger("singleton")


class GroupTerm:
    def __init__(self, run: ShardedRun, group: str, election: Election, term: Term, won_revision: int,
                 won_at: float, handover: Handover | None) -> None:
        self.run, self.group, self.election, self.term = run, group, election, term
        self.won_revision, self.won_at, self.handover = won_revision, won_at, handover
        self.wake = threading.Event()
        self.resign = threading.Event()
        self.hand_to = ""  # a rebalance names the member it moves the group to; else placement decides
        self.leadership: Leadership | None = None
        self.outcome: TermOutcome | None = None
        self.thread = threading.Thread(target=self._run, daemon=True, name=f"singleton-group-{group}")

    @property
    def token(self) -> int:
        return self.term.fencing_token

    @property
    def lease_id(self) -> int:
        return self.term.keeper.lease_id

    def busy(self) -> bool:
        """A run of this group's jobs is in flight (or the term has not set up yet: not to be moved now)."""
        leadership = self.leadership
        return leadership is None or leadership.jobs.busy()

    def start(self) -> GroupTerm:
        self.thread.start()
        return self

    def lost(self) -> None:
        """Our key was deleted or replaced behind our back (seen by the view's watch): this term ends."""
        self.term.keeper.mark_lost(StepDownReason.LEADERSHIP_LOST)
        self.wake.set()

    def request_resign(self, hand_to: str = "") -> None:
        self.hand_to = hand_to
        self.resign.set()
        self.wake.set()

    def _stop_reason(self) -> StepDownReason | None:
        if self.run.stopping.is_set():
            return StepDownReason.SHUTDOWN
        if self.resign.is_set():
            return StepDownReason.RESIGNED
        return None

    def _run(self) -> None:
        run, app = self.run, self.run.app
        cfg = app.config.for_group(self.group)
        app.stats.won(None)
        log.info("elected leader of group %s replica=%s token=%d", self.group, cfg.replica_id, self.token)
        tracks = app._registry.tracks(app.backend, app.clock, self.token, None, group=self.group)
        leadership = Leadership(cfg, app.backend, app.clock, self.election, self.term, None, app.stats, self.wake,
                                self._stop_reason, self._stepping_down, tracks=tracks, shared_lease=True,
                                successor=lambda: self.hand_to or run.successor(self.group))
        self.leadership = leadership
        run.changed()
        app._listeners.post(app._on_elected, self.token)
        try:
            self.outcome = leadership.run(0.0, None, self.won_revision, self.resign_from_etcd, self.handover)
        except Exception:  # noqa: BLE001 - Leadership.run ends its term itself; this only keeps the replica alive
            log.exception("group %s: the term failed", self.group)
        finally:
            if self.election.role is Role.STEPPING_DOWN:
                self.election.stepped_down()
            run.term_ended(self)

    def _stepping_down(self, reason: StepDownReason) -> None:
        group_stepped_down(self.run.config.replica_id, self.group, reason.value)
        self.run.changed()
        app = self.run.app
        app._listeners.post(app._on_stepped_down, reason)

    def resign_from_etcd(self) -> None:
        """`singleton resign --group G`: withdraw from G for a while (so placement names another member and the
        balance does not hand it straight back), then hand it over."""
        if self.run.successor(self.group):  # the only member able to lead it: hand over, but take it back at once
            self.run.withdraw(self.group)
        self.request_resign()


def wake_all(terms: list[GroupTerm]) -> None:
    for term in terms:
        term.wake.set()

