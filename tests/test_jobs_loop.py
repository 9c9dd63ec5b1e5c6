"""Many jobs under one leadership term, driven deterministically by a fake clock on the in-memory backend: interval
and cron jobs interleave on their own instants, each slot is claimed once, overlap and pool limits skip and count,
timeouts cancel (an ignored cancel ends the term), and a new leader continues every job's series."""
from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from singleton.backends.memory import MemoryBackend
from singleton.core.clock import FakeClock
from singleton.core.config import Config
from singleton.core.election import Election
from singleton.core.jobspec import JobSpec, build_job_spec
from singleton.core.lease import LeaseKeeper, StepDownReason
from singleton.core.records import decode_handover, decode_run
from singleton.core.schedule import next_instants
from singleton.core.term import RunningJob
from singleton.runtime.leadership import Leadership
from singleton.runtime.runs import RunChain
from singleton.runtime.telemetry import Stats
from singleton.runtime.tracks import Track
from singleton.testing.recorder import wait_for

T0 = 1_700_000_000  # a whole minute (1700000000 % 60 == 20: cron slots below are computed, not assumed)


@dataclass
class FakeRunner:
    """A job's runs on the fake clock: each lasts `duration_s`; one that ignores its cancel runs on."""

    clock: FakeClock
    duration_s: float = 0.05
    max_instances: int = 1
    ignores_cancel: bool = False
    runs: list[dict[str, Any]] = field(default_factory=list)

    def _live(self) -> list[dict[str, Any]]:
        now = self.clock.monotonic()
        return [r for r in self.runs if now < r["end"]]

    def busy(self) -> bool:
        return bool(self._live())

    def full(self) -> bool:
        return len(self._live()) >= self.max_instances

    def running_all(self) -> list[RunningJob]:
        return [RunningJob(r["slot"], r["start"], r["cancelled_at"]) for r in self._live()]

    def running(self) -> RunningJob | None:
        runs = self.running_all()
        return runs[0] if runs else None

    def cancel(self, slot: int | None = None) -> None:
        for run in self._live():
            if slot is None or run["slot"] == slot:
                run["cancelled_at"] = run["cancelled_at"] or self.clock.monotonic()
                if not self.ignores_cancel:
                    run["end"] = self.clock.monotonic()

    def start(self, ctx: Any) -> None:
        assert not self.full(), "a run started beyond the job's overlap policy"
        now = self.clock.monotonic()
        self.runs.append({"slot": ctx.slot, "start": now, "end": now + self.duration_s, "cancelled_at": None,
                          "ctx": ctx})

    def wait_idle(self, timeout_s: float) -> bool:
        return not self.busy()

    @property
    def slots(self) -> list[int]:
        return [r["slot"] for r in self.runs]


class FakeWake:
    """Waiting moves the fake clock; each wait renews the lease (as the keepalive would)."""

    def __init__(self, clock: FakeClock, on_wait: Callable[[], None]) -> None:
        self.clock, self.on_wait, self.waits = clock, on_wait, 0

    def clear(self) -> None: ...

    def set(self) -> None: ...

    def wait(self, timeout: float) -> bool:
        self.waits += 1
        assert self.waits < 50_000, "tick loop did not end"
        self.clock.advance(timeout)
        self.on_wait()
        return False


class OffsetClock(FakeClock):
    """Another host: the same (fake) time passing, its wall clock `offset_s` off."""

    def __init__(self, base: FakeClock, offset_s: float) -> None:
        super().__init__()
        self.base, self.offset_s = base, offset_s

    def monotonic(self) -> float:
        return self.base.monotonic()

    def wall(self) -> float:
        return self.base.wall() + self.offset_s

    def advance(self, seconds: float) -> None:
        self.base.advance(seconds)


class Claims:
    """Every claim etcd accepted, per run key: (slot, transaction)."""

    def __init__(self, backend: MemoryBackend) -> None:
        self.by_key: dict[str, list[int]] = {}
        self.transactions = 0
        for method in ("claim", "claim_all"):
            original = getattr(backend, method)
            setattr(backend, method, self._wrap(original))

    def _wrap(self, original: Callable[..., int | None]) -> Callable[..., int | None]:
        def claim(leader_key: str, token: int, claims: Any, puts: dict[str, bytes], timeout_s: float) -> int | None:
            revision = original(leader_key, token, claims, puts, timeout_s)
            if revision is not None:
                self.transactions += 1
                for key, value in puts.items():
                    record = decode_run(value) if key.endswith("/run") else None
                    if record is not None:
                        self.by_key.setdefault(key, []).append(record.slot)
            return revision
        return claim


def config(replica: str = "r1", **extra: Any) -> Config:
    return Config(endpoints="127.0.0.1:2379", name="jobs", replica_id=replica, **extra)


def lead(backend: MemoryBackend, clock: FakeClock, jobs: list[tuple[JobSpec, Any]], run_for_s: float,
         replica: str = "r1", stop: StepDownReason = StepDownReason.SHUTDOWN, **cfg_extra: Any
         ) -> tuple[Leadership, Any]:
    """One term of `replica` on the memory backend, with named jobs; returns it and the handover it was woken by."""
    cfg = config(replica, **cfg_extra)
    lease = backend.grant_lease(10, 1.0)
    won = backend.campaign(cfg.leader_key, replica.encode(), lease.lease_id, 1.0, also_read=(cfg.handover_key,))
    assert won.won
    handover_kv = won.extra.get(cfg.handover_key)
    handover = decode_handover(handover_kv.value) if handover_kv is not None else None
    keeper = LeaseKeeper(lease.lease_id, 10.0, clock.monotonic(), min_remaining_ttl_s=2.0, max_failed_renewals=2)
    election = Election()
    election.campaign()
    term = election.won(won.fencing_token, keeper)

    def renew() -> None:
        backend.keep_alive_once(lease.lease_id, 1.0)
        keeper.renewal_succeeded(clock.monotonic(), 10.0)

    end = clock.monotonic() + run_for_s
    tracks = [Track(spec, runner, RunChain(cfg, backend, clock, term.fencing_token, None, spec.name))
              for spec, runner in jobs]
    leadership = Leadership(cfg, backend, clock, election, term, None, Stats(replica), FakeWake(clock, renew),  # type: ignore[arg-type]
                            lambda: stop if clock.monotonic() >= end else None, tracks=tracks)
    return leadership, handover


def specs() -> list[JobSpec]:
    return [build_job_spec("quarter", every=0.25), build_job_spec("second", every=1),
            build_job_spec("seven", every=7), build_job_spec("cron3", cron="*/3 * * * * *", tz="Europe/Berlin")]


def expected(spec: JobSpec, first: int, count: int) -> list[int]:
    return next_instants(spec.schedule, spec.schedule.instant(first) - 0.001, count)


def test_interval_and_cron_jobs_interleave_each_on_its_own_instants_and_each_slot_is_claimed_once() -> None:
    clock = FakeClock(wall=T0 + 0.4)
    backend = MemoryBackend(clock)
    claims = Claims(backend)
    runners = {s.name: FakeRunner(clock) for s in specs()}
    leadership, _ = lead(backend, clock, [(s, runners[s.name]) for s in specs()], 15.0)
    assert leadership._tick_until_step_down(None) is StepDownReason.SHUTDOWN
    cfg = leadership.config
    for spec in specs():
        runner = runners[spec.name]
        slots = runner.slots
        within = [k for k in next_instants(spec.schedule, T0 + 0.4, 100) if spec.schedule.instant(k) < T0 + 15.4]
        assert slots == within, spec.name  # every instant of the 15 s, in order, none twice
        for run in runner.runs:  # each started at its own instant (the fake clock: exactly)
            assert run["start"] - 1000.0 == pytest.approx(spec.schedule.instant(run["slot"]) - (T0 + 0.4))
            assert run["ctx"].job == spec.name and run["ctx"].scheduled_at == spec.schedule.instant(run["slot"])
        claimed = claims.by_key[cfg.job_run_key(spec.name)]
        assert len(claimed) == len(set(claimed)) and set(slots) <= set(claimed)
    assert len(runners["quarter"].slots) == 60 and len(runners["seven"].slots) == 3
    assert runners["cron3"].slots == [T0 + 1, T0 + 4, T0 + 7, T0 + 10, T0 + 13]  # :21, :24, ... Berlin time
    # Jobs due at the same instant were claimed together: fewer transactions than claims.
    assert claims.transactions < sum(len(v) for v in claims.by_key.values())


def test_jitter_delays_each_slot_by_the_same_amount_on_every_replica() -> None:
    clock = FakeClock(wall=T0 + 0.4)
    backend = MemoryBackend(clock)
    spec = build_job_spec("jittery", every=2, jitter=0.5)
    runner = FakeRunner(clock)
    leadership, _ = lead(backend, clock, [(spec, runner)], 9.0)
    leadership._tick_until_step_down(None)
    from singleton.core.schedule import jitter_offset_s
    assert len(runner.runs) == 4
    for run in runner.runs:
        offset = jitter_offset_s("jittery", run["slot"], 0.5)
        assert run["start"] - 1000.0 == pytest.approx(run["slot"] * 2 + offset - (T0 + 0.4))
        assert run["ctx"].scheduled_at == run["slot"] * 2.0  # the instant, jitter not included


def test_overlap_skip_skips_and_counts_and_allow_runs_up_to_max_instances() -> None:
    clock = FakeClock(wall=T0 + 0.5)
    backend = MemoryBackend(clock)
    skip = FakeRunner(clock, duration_s=2.5)
    allow = FakeRunner(clock, duration_s=2.5, max_instances=2)
    leadership, _ = lead(backend, clock, [(build_job_spec("skip", every=1), skip),
                                          (build_job_spec("allow", every=1, overlap="allow", max_instances=2), allow)],
                         10.0, stop=StepDownReason.LEADERSHIP_LOST)  # ends at once: no graceful drain
    leadership._tick_until_step_down(None)
    assert skip.slots == [T0 + 1, T0 + 4, T0 + 7, T0 + 10]  # one at a time: two slots skipped after each
    # Two at a time: two consecutive slots run, the third is skipped while both still go.
    assert allow.slots == [T0 + 1, T0 + 2, T0 + 4, T0 + 5, T0 + 7, T0 + 8, T0 + 10]
    for runner, limit in ((skip, 1), (allow, 2)):
        for run in runner.runs:
            overlapping = [r for r in runner.runs if r["start"] <= run["start"] < r["end"]]
            assert len(overlapping) <= limit
    missed = leadership.stats.job_missed
    assert missed["skip", "overrun"] == 6 and missed["allow", "overrun"] == 3


def test_a_timeout_cancels_the_run_and_an_ignored_cancel_ends_the_term() -> None:
    clock = FakeClock(wall=T0 + 0.5)
    backend = MemoryBackend(clock)
    polite = FakeRunner(clock, duration_s=5.0)
    hung = FakeRunner(clock, duration_s=60.0, ignores_cancel=True)
    leadership, _ = lead(backend, clock, [(build_job_spec("polite", every=1, timeout=0.5), polite),
                                          (build_job_spec("hung", every=7, timeout=1.5), hung)], 30.0,
                         job_cancel_grace_s=1.0)
    reason = leadership._tick_until_step_down(None)
    assert reason is StepDownReason.JOB_HUNG
    first_hung = hung.runs[0]
    # Cancelled at its timeout, judged hung a grace period later, and nothing ran after that.
    assert first_hung["cancelled_at"] == pytest.approx(first_hung["start"] + 1.5)
    assert clock.monotonic() == pytest.approx(first_hung["start"] + 2.5)
    assert all(r["cancelled_at"] == pytest.approx(r["start"] + 0.5) for r in polite.runs)
    assert len(polite.runs) >= 2 and leadership.stats.job_ticks["polite", "timed_out"] == len(polite.runs)


def test_a_full_worker_pool_skips_and_counts_and_never_queues() -> None:
    from singleton.runtime.jobs import JobRunner
    from singleton.runtime.pool import WorkerPool

    clock = FakeClock(wall=T0 + 0.5)
    backend = MemoryBackend(clock)
    release = threading.Event()
    started: list[tuple[str, int]] = []
    done = Counter[str]()

    def job(name: str) -> Callable[[Any], None]:
        def run(ctx: Any) -> None:
            started.append((name, ctx.slot))
            if name == "blocker":
                release.wait(10)
        return run

    pool = WorkerPool(1).start()
    runners = {n: JobRunner(job(n), lambda ctx, d, e: done.update([ctx.job]), clock, pool=pool)
               for n in ("blocker", "other")}
    try:
        leadership, _ = lead(backend, clock, [(build_job_spec(n, every=1), runners[n]) for n in runners], 4.0,
                             stop=StepDownReason.LEADERSHIP_LOST)
        leadership._tick_until_step_down(None)
        wait_for(lambda: started, 5, "the blocker to start on its worker")
    finally:
        release.set()
        pool.close()
    assert [s for n, s in started if n == "blocker"] == [T0 + 1]  # holds the one worker; later slots overrun
    assert not [s for n, s in started if n == "other"]  # never ran: no worker, and nothing was queued
    missed = leadership.stats.job_missed
    assert missed["other", "pool_full"] == 4 and missed["blocker", "overrun"] == 3


def series(runners: list[FakeRunner]) -> list[int]:
    return [s for r in runners for s in r.slots]


@pytest.mark.parametrize("offset_s", [0.0, 3600.0, -5.0])
def test_a_graceful_handover_continues_every_jobs_series_with_no_instant_missed_or_run_twice(offset_s: float) -> None:
    clock = FakeClock(wall=T0 + 0.4)
    backend = MemoryBackend(clock)
    first = {s.name: FakeRunner(clock) for s in specs()}
    # Stops 0.1 s before a whole second: the every-second job has claimed that slot ahead, and not run it.
    a, _ = lead(backend, clock, [(s, first[s.name]) for s in specs()], 9.5)
    a._tick_until_step_down(None)
    a._hand_over()
    handed_over_at = clock.monotonic()
    other = OffsetClock(clock, offset_s)
    second = {s.name: FakeRunner(clock) for s in specs()}
    b, handover = lead(backend, other, [(s, second[s.name]) for s in specs()], 12.0, replica="r2")
    assert handover is not None and set(handover.job_next_slots) == {s.name for s in specs()}
    b._tick_until_step_down(None, handover)
    for spec in specs():
        slots = series([first[spec.name], second[spec.name]])
        assert len(slots) == len(set(slots)), spec.name  # never a slot twice
        nxt = handover.job_next_slots[spec.name]
        if offset_s == 0.0:
            assert slots == expected(spec, slots[0], len(slots)), spec.name  # the same series, no gap
        elif offset_s < 0:  # numbering follows the handover, not our clock; due at our own next instant
            assert second[spec.name].slots[0] == nxt, spec.name
        else:  # our clock is ahead: our own next instant, later than the handover's slot (a jump, never a repeat)
            assert second[spec.name].slots[0] > nxt, spec.name
        period = spec.schedule.instant(spec.schedule.slot_after(nxt)) - spec.schedule.instant(nxt)
        assert second[spec.name].runs[0]["start"] - handed_over_at <= period + 0.01, spec.name  # no stall
    if offset_s == 0.0:
        assert first["second"].slots[-1] == T0 + 9 and second["second"].slots[0] == T0 + 10


@pytest.mark.parametrize("offset_s", [0.0, 3600.0, -5.0])
def test_after_a_crash_each_job_numbers_on_after_its_record_and_counts_what_it_missed(offset_s: float) -> None:
    clock = FakeClock(wall=T0 + 0.4)
    backend = MemoryBackend(clock)
    first = {s.name: FakeRunner(clock) for s in specs()}
    a, _ = lead(backend, clock, [(s, first[s.name]) for s in specs()], 9.5)
    a._tick_until_step_down(None)
    backend.revoke_lease(a.term.keeper.lease_id, 1.0)  # it dies: no handover
    clock.advance(3.0)
    second = {s.name: FakeRunner(clock) for s in specs()}
    b, handover = lead(backend, OffsetClock(clock, offset_s), [(s, second[s.name]) for s in specs()], 10.0,
                       replica="r2")
    assert handover is None
    started_at = clock.monotonic()
    b._tick_until_step_down(None)
    for spec in specs():
        record = a.tracks[[t.name for t in a.tracks].index(spec.name)].chain
        assert record is not None and record.last_slot is not None
        mine = second[spec.name]
        assert mine.slots and mine.slots[0] > record.last_slot, spec.name  # never the dead leader's claimed slot
        assert len(series([first[spec.name], mine])) == len(set(series([first[spec.name], mine])))
        # No stall, whatever our clock says: the first run comes within one of the job's periods.
        period = spec.schedule.instant(spec.schedule.slot_after(mine.slots[0])) - spec.schedule.instant(mine.slots[0])
        assert mine.runs[0]["start"] - started_at <= period + 0.01, spec.name
    if offset_s == 0.0:  # the slots nobody claimed while the key stood vacant are counted per job
        assert b.stats.job_missed["quarter", "takeover"] >= 8 and b.stats.job_missed["second", "takeover"] >= 2


# --- the every-second job takes the general arithmetic, which must be the ticker's exactly --------------------
@pytest.mark.parametrize("a_for_s, b_at, first", [
    (1.3, 2.02, 2),  # the record ends at T0+1; T0+2 began 20 ms ago and nobody claimed it: it runs now
    (1.3, 2.8, 3),  # too late to claim it and start within its second: the next one
    (1.5, 2.02, 3),  # the dead leader had claimed T0+2 ahead (at T0+1.75): it may have run it, so never ours
])
def test_a_takeover_that_was_no_handover_runs_the_slot_just_begun_only_if_nobody_claimed_it(
        a_for_s: float, b_at: float, first: int) -> None:
    """A key that etcd deleted late in a second (a lapsed lease, a sensed death) and a campaign won just after the
    next second began: that second is not lost when the run record shows nobody claimed it."""
    clock = FakeClock(wall=T0 + 0.4)
    backend = MemoryBackend(clock)
    spec = build_job_spec("second", every=1)
    mine, theirs = FakeRunner(clock), FakeRunner(clock)
    a, _ = lead(backend, clock, [(spec, mine)], a_for_s)
    a._tick_until_step_down(None)
    backend.revoke_lease(a.term.keeper.lease_id, 1.0)  # it dies: no handover
    assert mine.slots == [T0 + 1]
    clock.advance(T0 + b_at - clock.wall())
    b, handover = lead(backend, clock, [(spec, theirs)], 1.5, replica="r2")
    assert handover is None
    b._tick_until_step_down(None)
    assert theirs.slots[0] == T0 + first
    assert theirs.runs[0]["start"] - clock.monotonic() + clock.wall() - (T0 + first) < 0.1  # within its second
    assert not set(mine.slots) & set(theirs.slots)
    assert b.stats.job_missed["second", "takeover"] == (first - 2 if a_for_s < 1.45 else 0)


def test_the_general_plans_are_the_every_second_tickers_for_an_every_second_schedule() -> None:
    import random

    from singleton.core.runs import CatchUp, plan_catch_up, plan_catch_up_for
    from singleton.core.schedule import Interval
    from singleton.core.ticker import first_plan, first_schedule_plan, next_schedule_plan, plan_next

    every = Interval(1000)
    rng = random.Random(7)
    for _ in range(2000):
        wall = T0 + rng.uniform(-5, 5)
        mono = 100.0 + rng.uniform(0, 10)
        handover = rng.choice([None, T0 + rng.randint(-8, 3700)])
        record = rng.choice([None, T0 + rng.randint(-8, 3700)])
        legacy = first_plan(wall, mono, handover, record)
        general = first_schedule_plan(every, wall, mono, None if handover is None else handover + 1, record)
        assert (general.slot, general.scheduled_at) == (legacy.slot, legacy.scheduled_at)
        assert general.wake_at == pytest.approx(legacy.wake_at, abs=1e-9)
        last = T0 + rng.randint(-3700, 3700)
        legacy, general = plan_next(last, wall, mono), next_schedule_plan(every, last, wall, mono)
        assert general.slot == legacy.slot and general.wake_at == pytest.approx(legacy.wake_at, abs=1e-9)
        first, window = T0 + rng.randint(0, 300), rng.choice([1.0, 30.0, 60.0, 90.5])
        for policy in CatchUp:
            assert plan_catch_up_for(every, record, first, policy, window) == plan_catch_up(record, first, policy,
                                                                                          window)


def test_a_cron_job_through_the_fall_back_night_runs_each_local_time_once() -> None:
    from datetime import datetime
    from zoneinfo import ZoneInfo

    zone = ZoneInfo("America/New_York")
    start = datetime(2026, 11, 1, 0, 55, tzinfo=zone).timestamp()  # 00:55 EDT; at 02:00 EDT clocks go to 01:00 EST
    clock = FakeClock(wall=start)
    backend = MemoryBackend(clock)
    spec = build_job_spec("halfhour", cron="0 */30 * * * *", tz="America/New_York")
    runner = FakeRunner(clock)
    leadership, _ = lead(backend, clock, [(spec, runner)], 2 * 3600 + 10 * 60)
    leadership._tick_until_step_down(None)
    local = [datetime.fromtimestamp(s, zone).strftime("%H:%M %Z") for s in runner.slots]
    assert local == ["01:00 EDT", "01:30 EDT", "02:00 EST"]  # the repeated 01:00 and 01:30 EST do not run again


def test_a_graceful_stop_keeps_the_quick_jobs_on_schedule_until_the_slow_run_ends_then_hands_over() -> None:
    clock = FakeClock(wall=T0 + 0.5)
    backend = MemoryBackend(clock)
    slow, quick = FakeRunner(clock, duration_s=2.2), FakeRunner(clock)
    a, _ = lead(backend, clock, [(build_job_spec("slow", every=7), slow), (build_job_spec("quick", every=0.25), quick)],
                1.0)  # asked to stop at T0 + 1.5, while slow's run of T0 + 1 goes on until T0 + 3.2
    assert a._tick_until_step_down(None) is StepDownReason.SHUTDOWN
    assert clock.wall() == pytest.approx(T0 + 3.2, abs=0.06)  # the first moment no run was in flight
    assert quick.slots == list(range(4 * T0 + 3, 4 * T0 + 13))  # 0.75 .. 3.0: no instant missed while waiting
    assert a.drained_s == pytest.approx(1.7, abs=0.06)
    a._hand_over()
    b_runner = FakeRunner(clock)
    b, handover = lead(backend, clock, [(build_job_spec("quick", every=0.25), b_runner)], 1.0, replica="r2")
    assert handover is not None and handover.job_next_slots["quick"] == 4 * T0 + 13
    b._tick_until_step_down(None, handover)
    assert b_runner.slots[0] == 4 * T0 + 13  # the successor takes the very next instant


def test_a_pause_past_the_lease_runs_nothing_of_any_job_afterwards() -> None:
    clock = FakeClock(wall=T0 + 0.4)
    backend = MemoryBackend(clock)
    runners = {s.name: FakeRunner(clock) for s in specs()}
    leadership, _ = lead(backend, clock, [(s, runners[s.name]) for s in specs()], 30.0)
    paused: list[float] = []
    renew = leadership._wake.on_wait  # type: ignore[attr-defined]

    def on_wait() -> None:
        if not paused and clock.monotonic() > 1004.0:
            paused.append(clock.monotonic())
            clock.advance(11.0)  # SIGSTOP for longer than the whole lease: no renewal meanwhile
            return
        if not paused:
            renew()

    leadership._wake.on_wait = on_wait  # type: ignore[attr-defined]
    assert leadership._tick_until_step_down(None) is StepDownReason.LEASE_EXPIRING
    starts = [r["start"] for runner in runners.values() for r in runner.runs]
    assert paused and starts and all(start <= paused[0] for start in starts)


def test_the_handover_record_reads_both_ways_between_versions() -> None:
    from singleton.core.records import Handover

    old = Handover(replica_id="a", fencing_token=7, last_slot=T0, written_at_unix_s=T0 + 0.5).SerializeToString()
    decoded = decode_handover(old)
    assert decoded is not None and decoded.last_slot == T0 and dict(decoded.job_next_slots) == {}
    new = Handover(replica_id="a", fencing_token=7, last_slot=T0, job_next_slots={"quarter": 4 * T0 + 3})
    again = decode_handover(new.SerializeToString())
    assert again is not None and again.last_slot == T0 and again.job_next_slots["quarter"] == 4 * T0 + 3


def test_a_refused_batch_claim_ends_the_term_and_none_of_its_slots_run() -> None:
    clock = FakeClock(wall=T0 + 0.4)
    backend = MemoryBackend(clock)
    claims = Claims(backend)
    runners = {s.name: FakeRunner(clock) for s in specs()}
    leadership, _ = lead(backend, clock, [(s, runners[s.name]) for s in specs()], 30.0)
    cfg, token = leadership.config, leadership.term.fencing_token
    renew = leadership._wake.on_wait  # type: ignore[attr-defined]
    moved: list[float] = []

    def on_wait() -> None:
        renew()
        if not moved and clock.monotonic() > 1003.0:  # someone else extends job "second"'s chain behind our back
            moved.append(clock.monotonic())
            assert backend.guarded_put(cfg.leader_key, token, cfg.job_run_key("second"), b"not ours", 1.0)

    leadership._wake.on_wait = on_wait  # type: ignore[attr-defined]
    assert leadership._tick_until_step_down(None) is StepDownReason.CLAIM_REFUSED
    for spec in specs():  # every run was claimed first, and nothing ran after the refusal
        assert set(runners[spec.name].slots) <= set(claims.by_key.get(cfg.job_run_key(spec.name), []))
    assert moved and sum(len(r.runs) for r in runners.values()) > 10
