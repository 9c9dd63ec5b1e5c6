"""The ticker's slot arithmetic, and the tick loop driven deterministically by a fake clock."""
from __future__ import annotations

from collections.abc import Callable

import pytest

from singleton.core.clock import FakeClock
from singleton.core.config import Config
from singleton.core.election import Election
from singleton.runtime.leadership import Leadership
from singleton.core.lease import LeaseKeeper, StepDownReason
from singleton.backends.memory import MemoryBackend
from singleton.runtime.telemetry import Stats
from singleton.core.term import RunningJob
from singleton.core.ticker import Verdict, check_due, first_plan, plan_next, plan_slot

T0 = 1_700_000_000


# --- pure slot arithmetic -----------------------------------------------------------------------------
def first_slot(wall: float, handover: int | None) -> int:
    return first_plan(wall, 0.0, handover).slot


def test_first_slot_is_the_next_whole_second():
    assert first_slot(T0 + 0.3, None) == T0 + 1
    assert first_slot(T0 + 0.0, None) == T0 + 1  # the current second may already be the predecessor's


def test_first_slot_after_a_graceful_handover_takes_the_slot_after_the_last_one_run():
    assert first_slot(T0 + 0.004, T0 - 1) == T0  # woke just after the boundary: the current second is still ours
    assert first_slot(T0 + 0.7, T0) == T0 + 1
    assert first_slot(T0 + 5.2, T0) == T0 + 6  # a stale handover is ignored


@pytest.mark.parametrize("ahead_s", [1, 5, 3600])
def test_a_handover_from_a_clock_ahead_is_due_within_a_second_and_reuses_no_number(ahead_s: int):
    # The predecessor's clock ran `ahead_s` fast: its last slot is ahead of ours.
    plan = first_plan(T0 + 0.3, 50.0, T0 + ahead_s)
    assert plan.slot == T0 + ahead_s + 1  # numbering follows on: no slot number repeats
    assert plan.wake_at == pytest.approx(50.7)  # due at our next whole second, not in `ahead_s` seconds


def test_plans_are_anchored_to_whole_seconds_without_drift():
    mono = 50.0
    plan = plan_next(T0, T0 + 0.137, mono)  # the previous tick ran 137 ms late
    assert plan.slot == T0 + 1
    assert plan.wake_at == pytest.approx(mono + 0.863)


def test_due_run_wait_and_too_late():
    plan = plan_slot(T0 + 1, T0 + 0.5, 10.0)
    assert check_due(plan, T0 + 0.9, 10.4).verdict is Verdict.WAIT
    due = check_due(plan, T0 + 1.01, 10.51)
    assert due.verdict is Verdict.RUN and due.lateness_s == pytest.approx(0.01)
    assert check_due(plan, T0 + 2.6, 12.1).verdict is Verdict.TOO_LATE


def test_backward_wall_step_never_reuses_a_slot_and_keeps_one_per_second():
    # The slot T0+10 ran; then the wall clock jumps back an hour.
    plan = plan_next(T0 + 10, T0 + 10.05 - 3600, 100.0)
    assert plan.slot == T0 + 11
    assert plan.wake_at == pytest.approx(100.95)


def test_forward_wall_step_jumps_ahead_without_a_burst():
    plan = plan_next(T0 + 10, T0 + 10.05 + 3600, 100.0)
    assert plan.slot == T0 + 3611
    assert plan.wake_at == pytest.approx(100.95)


def test_a_wall_step_during_the_wait_is_reported():
    plan = plan_slot(T0 + 1, T0 + 0.5, 10.0)
    due = check_due(plan, T0 + 1.0 - 3600, 10.5)
    assert due.verdict is Verdict.RUN and due.clock_step_s == pytest.approx(-3600)


# --- the tick loop, deterministic ----------------------------------------------------------------------
class FakeJobs:
    def __init__(self, clock: FakeClock, duration_s: float = 0.05) -> None:
        self.clock, self.duration_s = clock, duration_s
        self.started: list[tuple[int, float]] = []  # (slot, monotonic start)
        self._busy_until = 0.0
        self.cancelled_at: float | None = None

    def busy(self) -> bool:
        return self.clock.monotonic() < self._busy_until

    def running(self) -> RunningJob | None:
        if not self.busy():
            return None
        slot, started_at = self.started[-1]
        return RunningJob(slot, started_at, self.cancelled_at)

    def cancel(self) -> None:
        if self.busy() and self.cancelled_at is None:
            self.cancelled_at = self.clock.monotonic()

    def start(self, ctx) -> None:
        assert not self.busy(), "a tick started while the previous one was running"
        self.started.append((ctx.slot, self.clock.monotonic()))
        self._busy_until = self.clock.monotonic() + self.duration_s
        self.cancelled_at = None


class FakeWake:
    """Stands in for the wake event: waiting moves the fake clock, and a script may act at each wait."""

    def __init__(self, clock: FakeClock, on_wait: Callable[[FakeClock], None], longest_wait_s: float = 1e9) -> None:
        self.clock, self.on_wait, self.waits = clock, on_wait, 0
        self.longest_wait_s = longest_wait_s  # shorter: woken early, as by each renewal

    def clear(self) -> None: ...

    def set(self) -> None: ...

    def wait(self, timeout: float) -> bool:
        self.waits += 1
        assert self.waits < 10_000, "tick loop did not end"
        self.clock.advance(min(timeout, self.longest_wait_s))
        self.on_wait(self.clock)
        return False


def new_keeper(clock: FakeClock) -> LeaseKeeper:
    return LeaseKeeper(1, 10.0, clock.monotonic(), min_remaining_ttl_s=2.0, max_failed_renewals=2)


def run_loop(clock: FakeClock, jobs: FakeJobs, on_wait: Callable[[FakeClock], None],
             stop_after_s: float | None = 20.0, handover: int | None = None,
             keeper: LeaseKeeper | None = None, longest_wait_s: float = 1e9) -> tuple[StepDownReason, LeaseKeeper]:
    """Run one term's tick loop to its end; renewals, pauses and clock steps happen in `on_wait`."""
    cfg = Config(endpoints="127.0.0.1:2379", name="t", replica_id="r1")
    keeper = keeper or new_keeper(clock)
    election = Election()
    election.campaign()
    term = election.won(42, keeper)
    end = None if stop_after_s is None else clock.monotonic() + stop_after_s
    leadership = Leadership(cfg, MemoryBackend(clock), clock, election, term, jobs, Stats("r1"),
                            FakeWake(clock, on_wait, longest_wait_s),  # type: ignore[arg-type]
                            lambda: StepDownReason.SHUTDOWN if end is not None and clock.monotonic() >= end else None)
    return leadership._tick_until_step_down(handover), keeper


def test_one_tick_per_second_on_whole_seconds():
    clock = FakeClock(wall=T0 + 0.25)
    jobs = FakeJobs(clock)
    reason, _ = run_loop(clock, jobs, lambda c: None, stop_after_s=7.5)
    assert reason is StepDownReason.LEASE_EXPIRING or reason is StepDownReason.SHUTDOWN
    slots = [s for s, _ in jobs.started]
    assert slots == list(range(T0 + 1, T0 + 1 + len(slots)))
    assert len(slots) >= 6  # no renewal: lease 10 s, margin 2 s, started 0.75 s before the first slot


def test_overrun_skips_the_slot_and_never_runs_two_at_once():
    clock = FakeClock(wall=T0 + 0.5)
    jobs = FakeJobs(clock, duration_s=1.5)  # every run overlaps the next slot
    run_loop(clock, jobs, lambda c: None, stop_after_s=6.6)
    slots = [s for s, _ in jobs.started]
    assert slots == [T0 + 1, T0 + 3, T0 + 5, T0 + 7]  # every other slot skipped, none queued, no catch-up


def test_pause_past_the_lease_never_ticks_afterwards():
    clock = FakeClock(wall=T0 + 0.5)
    jobs = FakeJobs(clock)
    paused = []

    def on_wait(c: FakeClock) -> None:
        if not paused and c.monotonic() > 1003.0:
            paused.append(c.monotonic())
            c.advance(11.0)  # SIGSTOP for longer than the whole lease

    reason, _ = run_loop(clock, jobs, on_wait)
    assert reason is StepDownReason.LEASE_EXPIRING
    assert paused and all(start < paused[0] for _, start in jobs.started)


def test_renewals_keep_it_ticking_and_two_failures_stop_it_before_the_lease_lapses():
    clock = FakeClock(wall=T0 + 0.5)
    jobs = FakeJobs(clock)
    keeper = new_keeper(clock)
    failing_from = 1006.0

    def on_wait(c: FakeClock) -> None:
        if c.monotonic() < failing_from:
            keeper.renewal_succeeded(c.monotonic(), 10.0)
        else:
            keeper.renewal_failed()  # every renewal from now on fails

    reason, _ = run_loop(clock, jobs, on_wait, stop_after_s=None, keeper=keeper)
    assert reason is StepDownReason.RENEWALS_FAILED
    last_start = jobs.started[-1][1]
    assert last_start < keeper.expires_at - 2.0  # every tick ran with at least the margin left
    assert len(jobs.started) >= 5


def test_wall_clock_step_back_produces_no_duplicate_or_burst():
    clock = FakeClock(wall=T0 + 0.5)
    jobs = FakeJobs(clock)
    keeper = new_keeper(clock)
    stepped = []

    def on_wait(c: FakeClock) -> None:
        keeper.renewal_succeeded(c.monotonic(), 10.0)
        if not stepped and c.monotonic() > 1003.0:
            stepped.append(True)
            c.step_wall(-3600.0)

    run_loop(clock, jobs, on_wait, stop_after_s=8.0, keeper=keeper)
    slots = [s for s, _ in jobs.started]
    starts = [t for _, t in jobs.started]
    assert len(set(slots)) == len(slots) and slots == sorted(slots)
    assert all(b - a >= 0.99 for a, b in zip(starts, starts[1:]))  # never two ticks within a second
    assert len(slots) >= 7


def test_handover_slot_runs_at_once_if_it_is_the_current_second():
    clock = FakeClock(wall=T0 + 0.004)
    jobs = FakeJobs(clock)
    start = clock.monotonic()
    run_loop(clock, jobs, lambda c: None, stop_after_s=1.5, handover=T0 - 1)
    assert jobs.started[0] == (T0, start)  # 4 ms late, but the second is not missed
    assert jobs.started[1][0] == T0 + 1


def test_a_handover_from_a_leader_whose_clock_is_an_hour_ahead_ticks_within_a_second():
    clock = FakeClock(wall=T0 + 0.5)
    jobs = FakeJobs(clock)
    start = clock.monotonic()
    run_loop(clock, jobs, lambda c: None, stop_after_s=3.6, handover=T0 + 3600)
    first_slot_run, first_start = jobs.started[0]
    assert first_start - start <= 1.0  # not an hour of holding the lease and ticking nothing
    assert [s for s, _ in jobs.started] == [T0 + 3601, T0 + 3602, T0 + 3603, T0 + 3604]


def test_a_wall_clock_step_is_reported_once_however_often_the_wait_is_woken(caplog: pytest.LogCaptureFixture):
    clock = FakeClock(wall=T0 + 0.1)
    jobs = FakeJobs(clock)
    stepped: list[bool] = []

    def on_wait(c: FakeClock) -> None:
        if not stepped:
            stepped.append(True)
            c.step_wall(-3600.0)

    with caplog.at_level("WARNING", logger="singleton"):
        run_loop(clock, jobs, on_wait, stop_after_s=2.5, longest_wait_s=0.2)
    assert len([r for r in caplog.records if "wall clock stepped" in r.getMessage()]) == 1


def leadership_with_record(clock: FakeClock, jobs: FakeJobs, run_for_s: float,
                           record_slot: int | None = None) -> tuple[Leadership, list[tuple[int, float]]]:
    """A leader on the memory backend with the run record on; returns it and the claims it makes (slot, wall)."""
    from singleton.core.records import RunRecord, decode_run
    from singleton.runtime.runs import RunChain

    backend = MemoryBackend(clock)
    cfg = Config(endpoints="127.0.0.1:2379", name="t", replica_id="r1")
    if record_slot is not None:  # a predecessor's last claim
        assert backend.guarded_put(cfg.leader_key, 0, cfg.run_key, RunRecord(seq=5, slot=record_slot).SerializeToString(),
                                   1.0)
    lease = backend.grant_lease(10, 1.0)
    won = backend.campaign(cfg.leader_key, b"r1", lease.lease_id, 1.0, also_read=(cfg.run_key,))
    claims: list[tuple[int, float]] = []

    def intercept(original):  # type: ignore[no-untyped-def]
        def claim(*args, **kwargs):  # type: ignore[no-untyped-def]
            revision = original(*args, **kwargs)
            claims.append((decode_run(args[3][cfg.run_key]).slot, clock.wall()))  # type: ignore[union-attr]
            return revision
        return claim

    # A claim that also compares the job's control record (runtime.control) goes through claim_all.
    backend.claim = intercept(backend.claim)  # type: ignore[method-assign]
    backend.claim_all = intercept(backend.claim_all)  # type: ignore[method-assign]
    keeper = LeaseKeeper(lease.lease_id, 10.0, clock.monotonic(), min_remaining_ttl_s=2.0, max_failed_renewals=2)
    election = Election()
    election.campaign()
    term = election.won(won.fencing_token, keeper)
    end = clock.monotonic() + run_for_s
    leadership = Leadership(cfg, backend, clock, election, term, jobs, Stats("r1"),
                            FakeWake(clock, lambda c: keeper.renewal_succeeded(c.monotonic(), 10.0)),  # type: ignore[arg-type]
                            lambda: StepDownReason.SHUTDOWN if clock.monotonic() >= end else None,
                            chain=RunChain(cfg, backend, clock, term.fencing_token, won.extra.get(cfg.run_key)))
    return leadership, claims


def test_each_slot_is_claimed_ahead_of_its_second_even_right_after_the_previous_run_started():
    clock = FakeClock(wall=T0 + 0.5)
    jobs = FakeJobs(clock, duration_s=0.3)  # still running when the next wait is planned
    leadership, claims = leadership_with_record(clock, jobs, 5.5)
    leadership._tick_until_step_down(None)
    started = [s for s, _ in jobs.started]
    assert len(started) >= 4 and started == [s for s, _ in claims][:len(started)]  # every run was claimed first
    assert all(slot - at >= 0.2 for slot, at in claims), claims  # made ~0.25 s ahead, never at the slot


def test_a_handover_takes_the_next_slot_even_if_the_predecessor_had_already_claimed_it():
    # SIGTERM in the last quarter of second T0-1: the predecessor had claimed T0 ahead, ran up to T0-1, handed over.
    clock = FakeClock(wall=T0 + 0.004)
    jobs = FakeJobs(clock)
    leadership, claims = leadership_with_record(clock, jobs, 1.5, record_slot=T0)
    leadership._tick_until_step_down(T0 - 1)
    assert jobs.started[0][0] == T0  # the very next second, not T0 + 1
    assert claims[0][0] == T0


def test_after_a_crash_the_record_decides_where_numbering_goes_on():
    clock = FakeClock(wall=T0 + 0.5)
    jobs = FakeJobs(clock)
    leadership, _ = leadership_with_record(clock, jobs, 2.0, record_slot=T0 + 1)  # claimed, perhaps run
    leadership._tick_until_step_down(None)
    assert jobs.started[0][0] == T0 + 2  # never the slot the dead leader may have run
