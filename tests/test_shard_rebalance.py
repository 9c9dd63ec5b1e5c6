"""The coordinator's rebalance decision on stand-in terms: when it moves groups, and when it looks again."""
from __future__ import annotations

import threading

from singleton import Config, Singleton
from singleton.backends.memory import MemoryBackend
from singleton.core.clock import FakeClock
from singleton.runtime.shard.sharded import ShardedRun
from singleton.runtime.shard.view import Member


class StandInTerm:
    """What _rebalance reads of a GroupTerm: its age, whether a run is in flight, and the resign it may ask."""

    def __init__(self, group: str, won_at: float, busy: bool) -> None:
        self.group, self.won_at, self._busy = group, won_at, busy
        self.resign = threading.Event()
        self.handed_to: str | None = None

    def busy(self) -> bool:
        return self._busy

    def request_resign(self, to: str = "") -> None:
        self.handed_to = to
        self.resign.set()


def sharded(groups: list[str]) -> ShardedRun:
    clock = FakeClock()
    config = Config(endpoints="127.0.0.1:2379", name="rb", replica_id="me", shard=True)
    app = Singleton(config, backend=MemoryBackend(clock), clock=clock)
    for group in groups:
        app.job(lambda ctx: None, name=group, every=1)
    return ShardedRun(app)


def test_groups_busy_at_every_look_are_looked_at_again_soon_at_a_random_phase_not_a_whole_interval_later() -> None:
    """Every-second runs are busy from their claim to their end, at the same phase of each second: looking again a
    whole interval later would land in that window every time and never move anything (seen in CI under load)."""
    groups = [f"g{i}" for i in range(6)]
    run = sharded(groups)
    run.terms = {g: StandInTerm(g, 0.0, busy=True) for g in groups}  # type: ignore[misc]
    members = {"me": frozenset(groups), "other": frozenset(groups)}
    view_members = {"other": Member("other", 7, frozenset(groups))}
    looks = {run._rebalance(100.0, members, view_members) - 100.0 for _ in range(20)}
    assert all(0.1 <= dt <= 0.3 for dt in looks), looks  # soon, not rebalance_interval_s (1 s) later
    assert len(looks) > 1  # at a random phase
    assert not any(t.resign.is_set() for t in run.terms.values())  # nothing busy was moved


def test_idle_settled_groups_move_to_their_preferred_member_a_tenth_per_interval() -> None:
    groups = [f"g{i}" for i in range(20)]
    run = sharded(groups)
    run.terms = {g: StandInTerm(g, 0.0, busy=False) for g in groups}  # type: ignore[misc]
    members = {"me": frozenset(groups), "other": frozenset(groups)}
    next_look = run._rebalance(100.0, members, {"other": Member("other", 7, frozenset(groups))})
    moved = [t for t in run.terms.values() if t.resign.is_set()]  # type: ignore[attr-defined]
    assert len(moved) == 2  # a tenth of the 20 led
    assert all(t.handed_to == "other" for t in moved)  # named: the member placement chose
    assert next_look == 100.0 + run.config.rebalance_interval_s
    assert run._rebalance(100.5, members, {"other": Member("other", 7, frozenset(groups))}) == \
        100.0 + run.config.rebalance_interval_s  # paced: nothing more before the interval
