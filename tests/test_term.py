"""core.term: the order of a step-down and the job-timeout rules, decided without I/O, driven by a fake clock."""
from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from singleton.core.lease import StepDownReason
from singleton.core.term import Act, JobVerdict, RunningJob, StepDown, job_deadline, job_verdict


@dataclass
class World:
    """What the step-down loop would observe: a job that ends when told (or never), a lease that may fail."""

    now: float = 100.0
    job_busy: bool = True
    job_obeys_cancel: bool = True
    job_ends_at: float | None = None  # ends by itself at this time
    lease_ok: bool = True
    acts: list[Act] = field(default_factory=list)

    def run(self, plan: StepDown, limit: int = 1000) -> list[Act]:
        for _ in range(limit):
            if self.job_ends_at is not None and self.now >= self.job_ends_at:
                self.job_busy = False
            step = plan.next(self.now, job_busy=self.job_busy, lease_ok=self.lease_ok)
            if step.act is Act.DONE:
                return self.acts
            if step.act is not Act.WAIT_FOR_JOB or not self.acts or self.acts[-1] is not Act.WAIT_FOR_JOB:
                self.acts.append(step.act)
            if step.act is Act.CANCEL_JOB and self.job_obeys_cancel:
                self.job_busy = False
            if step.act is Act.WAIT_FOR_JOB:
                assert step.wait_s > 0
                self.now += min(step.wait_s, 0.05)
        raise AssertionError("the step-down never finished")


def plan(reason: StepDownReason, now: float = 100.0, **kw: float) -> StepDown:
    return StepDown(reason, now, stop_timeout_s=kw.get("stop_timeout_s", 5.0),
                    cancel_grace_s=kw.get("cancel_grace_s", 2.0))


@pytest.mark.parametrize("reason", [StepDownReason.LEASE_EXPIRING, StepDownReason.RENEWALS_FAILED,
                                    StepDownReason.LEASE_LOST, StepDownReason.LEADERSHIP_LOST,
                                    StepDownReason.TICKER_FAILED])
def test_a_forced_step_down_cancels_the_job_before_anyone_is_told(reason: StepDownReason) -> None:
    acts = World().run(plan(reason))
    assert acts == [Act.CANCEL_JOB, Act.NOTIFY, Act.STOP_RENEWING, Act.REVOKE]


def test_a_forced_step_down_with_no_job_running_notifies_and_revokes() -> None:
    acts = World(job_busy=False).run(plan(StepDownReason.LEASE_EXPIRING))
    assert acts == [Act.NOTIFY, Act.STOP_RENEWING, Act.REVOKE]


def test_a_graceful_stop_lets_the_tick_finish_then_hands_over_before_it_stops_renewing() -> None:
    world = World(job_ends_at=101.0)
    acts = world.run(plan(StepDownReason.SHUTDOWN))
    assert acts == [Act.NOTIFY, Act.WAIT_FOR_JOB, Act.HAND_OVER, Act.STOP_RENEWING, Act.REVOKE]
    assert world.now == pytest.approx(101.0, abs=0.06)  # it waited for the job, not for the whole stop timeout


def test_a_graceful_stop_cancels_the_tick_at_the_stop_timeout() -> None:
    world = World(job_ends_at=1000.0)
    acts = world.run(plan(StepDownReason.RESIGNED, stop_timeout_s=5.0))
    assert acts == [Act.NOTIFY, Act.WAIT_FOR_JOB, Act.CANCEL_JOB, Act.HAND_OVER, Act.STOP_RENEWING, Act.REVOKE]
    assert world.now == pytest.approx(105.0, abs=0.06)


def test_a_job_that_ignores_its_cancel_keeps_the_key_and_the_lease_and_the_stop_is_one_bounded_wait() -> None:
    world = World(job_obeys_cancel=False)
    acts = world.run(plan(StepDownReason.SHUTDOWN, stop_timeout_s=5.0, cancel_grace_s=2.0))
    assert acts == [Act.NOTIFY, Act.WAIT_FOR_JOB, Act.CANCEL_JOB, Act.WAIT_FOR_JOB, Act.STOP_RENEWING,
                    Act.LET_LEASE_LAPSE]
    assert Act.HAND_OVER not in acts and Act.REVOKE not in acts
    assert world.now == pytest.approx(107.0, abs=0.06)  # stop timeout + cancel grace, once


def test_a_forced_step_down_whose_job_ignores_the_cancel_releases_nothing() -> None:
    world = World(job_obeys_cancel=False)
    acts = world.run(plan(StepDownReason.RENEWALS_FAILED, cancel_grace_s=2.0))
    assert acts == [Act.CANCEL_JOB, Act.NOTIFY, Act.WAIT_FOR_JOB, Act.STOP_RENEWING, Act.LET_LEASE_LAPSE]
    assert world.now == pytest.approx(102.0, abs=0.06)


def test_a_graceful_stop_turns_forced_when_the_lease_gets_into_trouble_while_it_waits() -> None:
    world = World(job_ends_at=1000.0)
    step_down = plan(StepDownReason.SHUTDOWN, stop_timeout_s=5.0)
    assert step_down.next(world.now, job_busy=True, lease_ok=True).act is Act.NOTIFY
    assert step_down.next(world.now, job_busy=True, lease_ok=True).act is Act.WAIT_FOR_JOB
    world.now += 1.0
    world.lease_ok = False
    assert step_down.next(world.now, job_busy=True, lease_ok=False).act is Act.CANCEL_JOB  # at once, not at 5 s
    assert not step_down.graceful
    acts = world.run(step_down)
    assert Act.HAND_OVER not in acts  # no handover on a lease in doubt


def test_a_job_already_cancelled_by_its_timeout_gets_no_second_grace() -> None:
    step_down = StepDown(StepDownReason.JOB_HUNG, 110.0, stop_timeout_s=5.0, cancel_grace_s=2.0,
                         job_cancelled_at=108.0)
    world = World(now=110.0, job_obeys_cancel=False)
    acts = world.run(step_down)
    assert acts == [Act.NOTIFY, Act.STOP_RENEWING, Act.LET_LEASE_LAPSE]
    assert world.now == 110.0


def test_job_verdicts_follow_the_timeout_and_the_grace() -> None:
    job = RunningJob(slot=7, started_at=10.0)
    assert job_verdict(None, 99.0, 1.0, 2.0) is JobVerdict.FINE
    assert job_verdict(job, 99.0, None, 2.0) is JobVerdict.FINE  # no timeout: today's behaviour
    assert job_verdict(job, 12.9, 3.0, 2.0) is JobVerdict.FINE
    assert job_verdict(job, 13.0, 3.0, 2.0) is JobVerdict.CANCEL
    cancelled = RunningJob(7, 10.0, cancelled_at=13.0)
    assert job_verdict(cancelled, 14.9, 3.0, 2.0) is JobVerdict.FINE
    assert job_verdict(cancelled, 15.0, 3.0, 2.0) is JobVerdict.HUNG
    assert job_deadline(job, 3.0, 2.0) == 13.0 and job_deadline(cancelled, 3.0, 2.0) == 15.0
    assert job_deadline(job, None, 2.0) is None and job_deadline(None, 3.0, 2.0) is None
