"""Armed runs (runtime.arming, runtime.handoff): a sync run is handed to its worker at its claim and starts itself at
the slot's instant, after an in-memory check. Safety: nothing armed starts on a lease past its margin, after a stop,
a resign, a lost leader key, a pause or the end of the term; a run that did start is counted and never named again in
the handover. The loop is driven by a fake clock on the memory backend, its "worker" deciding at the instant (or as
late as a paused process wakes); the real worker pool is checked on the system clock."""
from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from singleton import MemoryBackend as PublicMemoryBackend, TickContext
from singleton.backends.memory import MemoryBackend
from singleton.core.clock import FakeClock, SystemClock
from singleton.core.election import Election
from singleton.core.jobspec import build_job_spec
from singleton.core.lease import LeaseKeeper, StepDownReason
from singleton.core.records import decode_handover
from singleton.ops.control import run_verb
from singleton.runtime.arming import Armed, ArmedState
from singleton.runtime.jobs import JobRunner
from singleton.runtime.leadership import Leadership
from singleton.runtime.pool import WorkerPool
from singleton.runtime.runs import RunChain
from singleton.runtime.telemetry import Stats
from singleton.runtime.tracks import Track
from singleton.testing.recorder import wait_for
from test_jobs_loop import T0, FakeRunner, config  # tests/ is on the path


class ArmingRunner(FakeRunner):
    """FakeRunner that arms: its "worker" decides when the fake clock reaches the instant (ArmingWake)."""

    def __init__(self, clock: FakeClock, on_arm: Callable[[Armed], None] = lambda a: None,
                 on_start: Callable[[], None] = lambda: None, **kw: Any) -> None:
        super().__init__(clock, **kw)
        self.armed: list[tuple[Any, Armed]] = []
        self.on_arm, self.on_start = on_arm, on_start

    def _live(self) -> list[dict[str, Any]]:  # an armed run holds its place until it starts or is dropped
        pending = [{"slot": a.slot, "start": a.at, "end": float("inf"), "cancelled_at": None}
                   for _, a in self.armed if a.settled() is ArmedState.ARMED]
        return super()._live() + pending

    def arm(self, ctx: Any, armed: Armed) -> bool:
        assert not self.full(), "armed beyond the job's overlap policy"
        self.armed.append((ctx, armed))
        self.on_arm(armed)
        return True

    def fire_due(self, now: float) -> None:
        """The worker's wake-up: each run armed for an instant at or before `now` decides now."""
        for ctx, armed in self.armed:
            if armed.at <= now and armed.settled() is ArmedState.ARMED and armed.decide(now):
                self.runs.append({"slot": ctx.slot, "start": now, "end": now + self.duration_s, "cancelled_at": None,
                                  "ctx": ctx, "armed": True})
                self.on_start()

    def next_at(self) -> float | None:
        pending = [a.at for _, a in self.armed if a.settled() is ArmedState.ARMED]
        return min(pending) if pending else None


class ArmingWake:
    """The loop's wait: time passes; a worker whose instant falls inside it wakes `late_s` after that instant (a
    process stopped meanwhile); the keepalive renews after each wait while `renewing`."""

    def __init__(self, clock: FakeClock, runner: ArmingRunner, renew: Callable[[], None]) -> None:
        self.clock, self.runner, self.renew = clock, runner, renew
        self.late_s, self.renewing, self.waits = 0.0, True, 0
        self.before_fire: Callable[[], None] = lambda: None  # what happens just before the worker's instant

    def clear(self) -> None: ...

    def set(self) -> None: ...

    def wait(self, timeout: float) -> bool:
        self.waits += 1
        assert self.waits < 5_000, "tick loop did not end"
        end = self.clock.monotonic() + timeout
        at = self.runner.next_at()
        if at is not None and at <= end:
            self.clock.advance(max(0.0, at + self.late_s - self.clock.monotonic()))
            self.before_fire()
            self.runner.fire_due(self.clock.monotonic())
        self.clock.advance(max(0.0, end - self.clock.monotonic()))
        if self.renewing:
            self.renew()
        return False


def lead(runner_for: Callable[[FakeClock], ArmingRunner], run_for_s: float = 3.0, ttl_s: float = 10.0,
         stop: Callable[[], StepDownReason | None] = lambda: None
         ) -> tuple[Leadership, ArmingRunner, ArmingWake, MemoryBackend]:
    """One term with one every-second job, started 0.4 s into a second; its lease is renewed to `ttl_s` after every
    wait (min remaining 2 s)."""
    clock = FakeClock(wall=T0 + 0.4)
    backend = MemoryBackend(clock)
    cfg = config()
    lease = backend.grant_lease(10, 1.0)
    won = backend.campaign(cfg.leader_key, b"r1", lease.lease_id, 1.0, also_read=(cfg.handover_key,))
    keeper = LeaseKeeper(lease.lease_id, ttl_s, clock.monotonic(), min_remaining_ttl_s=2.0, max_failed_renewals=2)
    election = Election()
    election.campaign()
    term = election.won(won.fencing_token, keeper)
    runner = runner_for(clock)
    wake = ArmingWake(clock, runner, lambda: keeper.renewal_succeeded(clock.monotonic(), ttl_s))
    spec = build_job_spec("tick", every=1)
    track = Track(spec, runner, RunChain(cfg, backend, clock, term.fencing_token, None, spec.name))
    end = clock.monotonic() + run_for_s

    def stop_reason() -> StepDownReason | None:
        return stop() or (StepDownReason.SHUTDOWN if clock.monotonic() >= end else None)

    leadership = Leadership(cfg, backend, clock, election, term, None, Stats("r1"), wake,  # type: ignore[arg-type]
                            stop_reason, tracks=[track])
    return leadership, runner, wake, backend


def test_armed_runs_start_at_their_instant_and_are_counted_once_each() -> None:
    leadership, runner, _, _ = lead(lambda c: ArmingRunner(c), run_for_s=4.0)
    assert leadership._tick_until_step_down(None) is StepDownReason.SHUTDOWN
    assert runner.slots == [T0 + 1, T0 + 2, T0 + 3, T0 + 4] and all(r["armed"] for r in runner.runs)
    for run in runner.runs:  # at the instant itself (the fake worker wakes on time), lateness 0
        assert run["start"] - 1000.0 == pytest.approx(run["slot"] - (T0 + 0.4))
        assert run["ctx"].lateness_s == 0.0 and run["ctx"].slot == run["slot"]
    # Each armed 0.25 s ahead, by its claim; the loop counted each run once when it settled it.
    assert [a.at - 1000.0 for _, a in runner.armed] == pytest.approx([0.6, 1.6, 2.6, 3.6])
    assert leadership.stats.job_ticks["tick", "run"] == 4 and leadership.last_started_slot == T0 + 4


def test_an_armed_run_whose_lease_passed_its_margin_before_the_instant_never_starts() -> None:
    """The process stops right after arming (GC, SIGSTOP) and the keepalive with it; the worker wakes 0.3 s late,
    within the slot's lateness limit but with less than the 2 s margin left on the lease: it must not start."""
    wake_ref: list[ArmingWake] = []

    def stopped(armed: Armed) -> None:
        wake_ref[0].late_s, wake_ref[0].renewing = 0.3, False

    leadership, runner, wake, _ = lead(lambda c: ArmingRunner(c, on_arm=stopped), ttl_s=2.5)
    wake_ref.append(wake)
    assert leadership._tick_until_step_down(None) is StepDownReason.LEASE_EXPIRING
    (_, armed), = runner.armed
    assert armed.settled() is ArmedState.REFUSED and runner.runs == []  # checked at the instant, not at the claim
    assert leadership.last_started_slot is None


@pytest.mark.parametrize("when", ["after_arming", "just_before_the_instant"])
@pytest.mark.parametrize("how", ["resign", "shutdown", "leader_key_lost"])
def test_a_step_down_between_arming_and_the_instant_keeps_the_run_from_starting_and_the_handover_names_its_slot(
        how: str, when: str) -> None:
    """Right after arming the loop's next pass disarms the run; just before the instant (the loop asleep until after
    it) the worker's own check refuses it."""
    asked: list[StepDownReason] = []
    leadership, runner, wake, backend = lead(lambda c: ArmingRunner(c), stop=lambda: asked[0] if asked else None)

    def step_down() -> None:
        if how == "leader_key_lost":
            leadership.term.keeper.mark_lost(StepDownReason.LEADERSHIP_LOST)
        else:
            asked.append(StepDownReason.RESIGNED if how == "resign" else StepDownReason.SHUTDOWN)

    if when == "after_arming":
        runner.on_arm = lambda armed: step_down()
    else:
        runner.on_arm = lambda armed: setattr(wake, "before_fire", step_down)
    reason = leadership._tick_until_step_down(None)
    assert reason is {"resign": StepDownReason.RESIGNED, "shutdown": StepDownReason.SHUTDOWN,
                      "leader_key_lost": StepDownReason.LEADERSHIP_LOST}[how]
    (_, armed), = runner.armed
    if when == "after_arming" and how != "leader_key_lost":
        assert armed.settled() is ArmedState.DISARMED  # the loop's pass right after the claim saw the stop
    elif when == "just_before_the_instant":
        assert armed.settled() is ArmedState.REFUSED
    assert runner.runs == [] and leadership.tracks[0].armed is None and not runner.busy()
    runner.fire_due(leadership.clock.monotonic() + 10)  # a worker waking after the term: still nothing
    assert runner.runs == []
    if how != "leader_key_lost":
        leadership._hand_over()  # the slot counts as not run: the successor runs it
        kv, _ = backend.get(leadership.config.handover_key, 1.0)
        assert kv is not None and decode_handover(kv.value).job_next_slots["tick"] == armed.slot == T0 + 1


def test_the_end_of_the_term_disarms_what_has_not_started() -> None:
    """The loop ends for a reason the worker's check cannot see (here: a claim refused, the run record no longer
    ours) while a run is armed and its worker still asleep: waking later, the worker finds it disarmed."""
    leadership, runner, wake, _ = lead(lambda c: ArmingRunner(c))

    def refused(armed: Armed) -> None:
        leadership._serve_triggers = lambda: StepDownReason.CLAIM_REFUSED  # type: ignore[method-assign]

    runner.on_arm = refused
    wake.runner = ArmingRunner(leadership.clock)  # this worker oversleeps: the loop wakes first and ends the term
    assert leadership._tick_until_step_down(None) is StepDownReason.CLAIM_REFUSED
    (_, armed), = runner.armed
    runner.fire_due(armed.at + 0.001)
    assert armed.settled() is ArmedState.DISARMED and runner.runs == [] and not runner.busy()


def test_a_pause_arriving_after_arming_disarms_the_run_and_the_slot_counts_as_paused() -> None:
    """The pause comes through the control watch (runtime.control.follow), which tells the loop's side at once."""
    backend_ref: list[MemoryBackend] = []
    lead_ref: list[Leadership] = []

    def pause(armed: Armed) -> None:
        leadership = lead_ref[0]
        run_verb(backend_ref[0], leadership.config, "pause", "tick", by="op", reason="test")
        wait_for(lambda: armed.settled() is ArmedState.DISARMED, 5, "the control watch to disarm the run")

    leadership, runner, _, backend = lead(lambda c: ArmingRunner(c, on_arm=pause), run_for_s=1.5)
    backend_ref.append(backend)
    lead_ref.append(leadership)
    _, revision = backend.get(leadership.config.leader_key, 1.0)
    follow = threading.Thread(target=leadership.controls.follow, args=(revision + 1,), daemon=True)
    follow.start()
    try:
        assert leadership._tick_until_step_down(None) is StepDownReason.SHUTDOWN
    finally:
        leadership._over.set()
        follow.join(5)
    (_, armed), = runner.armed  # the next slot was not armed either: the job is paused
    assert armed.settled() is ArmedState.DISARMED and runner.runs == []
    assert leadership.stats.job_missed["tick", "paused"] == 1


def test_a_run_started_just_before_the_term_ended_is_counted_and_not_named_again_in_the_handover() -> None:
    """The worker starts the job at the instant; the loop, next waking before it settled it, finds the term over."""
    asked: list[StepDownReason] = []
    leadership, runner, _, backend = lead(lambda c: ArmingRunner(c, duration_s=0.001,
                                                                  on_start=lambda: asked.append(
                                                                      StepDownReason.SHUTDOWN)),
                                          stop=lambda: asked[0] if asked else None)
    assert leadership._tick_until_step_down(None) is StepDownReason.SHUTDOWN
    assert runner.slots == [T0 + 1] and leadership.last_started_slot == T0 + 1
    assert leadership.stats.job_ticks["tick", "run"] == 1
    leadership._hand_over()
    kv, _ = backend.get(leadership.config.handover_key, 1.0)
    assert kv is not None and decode_handover(kv.value).job_next_slots["tick"] == T0 + 2


def test_a_worker_that_wakes_past_the_lateness_limit_does_not_start_and_the_slot_counts_as_late() -> None:
    wake_ref: list[ArmingWake] = []
    leadership, runner, wake, _ = lead(lambda c: ArmingRunner(c, on_arm=lambda a: setattr(wake_ref[0], "late_s",
                                                                                           1.2)), run_for_s=3.0)
    wake_ref.append(wake)
    assert leadership._tick_until_step_down(None) is StepDownReason.SHUTDOWN
    assert runner.armed[0][1].settled() is not ArmedState.STARTED and T0 + 1 not in runner.slots
    assert leadership.stats.job_missed["tick", "late"] >= 1


# --- the real worker pool, on the system clock -------------------------------------------------------------------
def _ctx(slot: int) -> TickContext:
    return TickContext(1, slot, float(slot), "r", threading.Event(), PublicMemoryBackend(), "/k", job="j")


def test_a_pool_worker_sleeps_until_the_instant_and_a_disarm_or_a_failed_check_keeps_the_job_from_ever_starting(
) -> None:
    clock, pool = SystemClock(), WorkerPool(2).start()
    started: list[tuple[int, float]] = []
    done = threading.Event()
    runner = JobRunner(lambda ctx: started.append((ctx.slot, time.monotonic())), lambda c, d, e: done.set(),
                       clock, pool=pool)
    try:
        at = clock.monotonic() + 0.15
        on_time = Armed(1, at, 1.0, clock, lambda now: True)
        assert runner.arm(_ctx(1), on_time) and runner.busy() and pool.busy == 1
        assert done.wait(5)
        (slot, first_line), = started
        assert slot == 1 and first_line >= at and on_time.settled() is ArmedState.STARTED
        wait_for(lambda: pool.busy == 0 and not runner.busy(), 5, "the worker back")
        disarmed = Armed(2, clock.monotonic() + 0.15, 1.0, clock, lambda now: True)
        assert runner.arm(_ctx(2), disarmed)
        assert disarmed.disarm() and not runner.busy()  # dropped at once: not running, no report
        refused = Armed(3, clock.monotonic() + 0.1, 1.0, clock, lambda now: False)  # e.g. the lease's margin
        assert runner.arm(_ctx(3), refused)
        wait_for(lambda: refused.settled() is ArmedState.REFUSED, 5, "the check at the instant")
        wait_for(lambda: pool.busy == 0, 5, "both workers back")
        assert [s for s, _ in started] == [1] and not runner.busy()
        cancelled = Armed(4, clock.monotonic() + 5.0, 1.0, clock, lambda now: True)
        assert runner.arm(_ctx(4), cancelled)
        runner.cancel()  # a step-down's cancel reaches a run not yet started: it never will, and its worker is back
        assert cancelled.settled() is ArmedState.DISARMED
        wait_for(lambda: pool.busy == 0, 5, "the worker woken by the disarm")
    finally:
        runner.cancel()
        pool.close()


def test_a_stop_seen_in_the_middle_of_a_pass_still_moves_the_plans_of_the_runs_it_started() -> None:
    """Two jobs due at one instant (the loop's own path): the first starts and ends at once, the check before the
    second finds a graceful stop with nothing running. The handover must name the slot after the one that started,
    else the successor would run it again."""
    from test_jobs_loop import lead as lead_jobs

    clock = FakeClock(wall=T0 + 0.5)
    backend = MemoryBackend(clock)
    asked: list[StepDownReason] = []

    class StopAskedOnStart(FakeRunner):
        def start(self, ctx: Any) -> None:
            super().start(ctx)
            asked.append(StepDownReason.SHUTDOWN)  # after this run started, before the next one's check

    first, second = StopAskedOnStart(clock, duration_s=0.0), FakeRunner(clock)
    leadership, _ = lead_jobs(backend, clock, [(build_job_spec("a", every=1), first),
                                               (build_job_spec("b", every=1), second)], 5.0)
    leadership._stop_reason = lambda: asked[0] if asked else None
    assert leadership._tick_until_step_down(None) is StepDownReason.SHUTDOWN
    assert first.slots == [T0 + 1] and second.slots == []
    leadership._hand_over()
    kv, _ = backend.get(leadership.config.handover_key, 1.0)
    assert kv is not None
    assert decode_handover(kv.value).job_next_slots == {"a": T0 + 2, "b": T0 + 1}


def test_runs_are_not_armed_when_the_pool_has_fewer_workers_than_runs_that_may_go_at_once() -> None:
    """Arming holds a worker ~0.25 s before the instant; with fewer workers than sync runs (--workers below the
    jobs' max_instances summed) that could leave a run due meanwhile without one: those start at the slot, as before."""
    clock = SystemClock()
    short, enough = WorkerPool(1, demand=2).start(), WorkerPool(2, demand=2).start()
    try:
        for pool, arms in ((short, False), (enough, True)):
            runner = JobRunner(lambda ctx: None, lambda c, d, e: None, clock, pool=pool)
            armed = Armed(1, clock.monotonic() + 5.0, 1.0, clock, lambda now: True)
            assert runner.arm(_ctx(1), armed) is arms and runner.busy() is arms
            armed.disarm()
    finally:
        short.close()
        enough.close()
