"""What a leadership term does next, decided without I/O (the tenacity style: the core decides, a thin loop acts).

Two decisions live here, so that their order is fixed in one place and unit-tested on a fake clock:

- `job_verdict`: while leading, what the running job's age means: nothing yet, cancel it (its timeout passed),
  or it is hung (still running a grace period after it was told to cancel) and the term must end.
- `StepDown`: the order of a step-down. The threads of `runtime.leadership` only carry out its steps.

The rules, and why:
- A non-graceful step-down (the lease is in doubt) cancels the job *first*: it may be writing on a lease that is
  about to lapse. Listeners are told after that, and only by posting to their own thread, so a slow callback
  never delays cancel, revoke or the next campaign.
- A graceful step-down (shutdown, resign) keeps renewing while the tick in flight finishes, so that no standby
  starts beside it; at `stop_timeout_s`, or at once if the lease gets into trouble, the job is cancelled.
- Nothing is released while a job that was told to cancel still runs: no handover, no revoke. The lease is left
  to run out, so a standby cannot start beside a job that may still be writing.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass

from singleton.core.lease import StepDownReason


class JobVerdict(enum.Enum):
    FINE = "fine"
    CANCEL = "cancel"  # the job ran past its timeout: tell it to stop
    HUNG = "hung"  # told to stop a grace period ago and still running: the term must end


@dataclass(frozen=True)
class RunningJob:
    """A snapshot of the tick in flight, on the monotonic clock."""

    slot: int
    started_at: float
    cancelled_at: float | None = None


def job_verdict(job: RunningJob | None, now: float, timeout_s: float | None, grace_s: float) -> JobVerdict:
    if job is None:
        return JobVerdict.FINE
    if job.cancelled_at is not None:
        return JobVerdict.HUNG if now - job.cancelled_at >= grace_s else JobVerdict.FINE
    if timeout_s is not None and now - job.started_at >= timeout_s:
        return JobVerdict.CANCEL
    return JobVerdict.FINE


def job_deadline(job: RunningJob | None, timeout_s: float | None, grace_s: float) -> float | None:
    """When `job_verdict` can next change (the ticker wakes then), or None."""
    if job is None:
        return None
    if job.cancelled_at is not None:
        return job.cancelled_at + grace_s
    return None if timeout_s is None else job.started_at + timeout_s


class Act(enum.Enum):
    CANCEL_JOB = "cancel_job"  # set the job's cancel event / cancel its task
    NOTIFY = "notify"  # post the step-down to the listeners' thread (never waits for them)
    WAIT_FOR_JOB = "wait_for_job"  # wait up to `wait_s` for the job to end (renewals go on meanwhile)
    STOP_RENEWING = "stop_renewing"  # end the keepalive and the resign watch
    HAND_OVER = "hand_over"  # one transaction: handover record + delete the leader key
    REVOKE = "revoke"  # revoke the lease (deletes the key if still there)
    LET_LEASE_LAPSE = "let_lease_lapse"  # a job ignored its cancel: release nothing
    DONE = "done"


@dataclass(frozen=True)
class Step:
    act: Act
    wait_s: float = 0.0


class StepDown:
    """The steps of one step-down, in order. Feed it what the loop observed; it answers the next step.

    `job_busy` is whether the tick in flight still runs; `lease_ok` whether the lease may still be relied on
    (the LeaseKeeper's check). WAIT_FOR_JOB repeats until the job ends or its deadline passes; every other
    step is answered once, then DONE.

        graceful:      NOTIFY, [WAIT_FOR_JOB..., [CANCEL_JOB, WAIT_FOR_JOB...]], HAND_OVER, STOP_RENEWING, REVOKE
        non-graceful:  [CANCEL_JOB], NOTIFY, [WAIT_FOR_JOB...], STOP_RENEWING, REVOKE
        job ignored its cancel:  ..., STOP_RENEWING, LET_LEASE_LAPSE   (no handover, no revoke)
    """

    def __init__(self, reason: StepDownReason, now: float, *, stop_timeout_s: float, cancel_grace_s: float,
                 job_cancelled_at: float | None = None) -> None:
        self.reason = reason
        self._graceful = reason.graceful
        self._grace_s = cancel_grace_s
        self._finish_by = now + stop_timeout_s  # graceful only: how long the tick in flight may take
        self._cancelled_at = job_cancelled_at  # the job may have been told already (its timeout)
        self._notified = self._handed_over = self._renewing_stopped = self._done = False
        self.job_left_running = False

    @property
    def graceful(self) -> bool:
        """Still graceful: a graceful step-down turns non-graceful when the lease gets into trouble."""
        return self._graceful

    def next(self, now: float, *, job_busy: bool, lease_ok: bool) -> Step:
        if self._done:
            return Step(Act.DONE)
        if self._graceful and not lease_ok:
            self._graceful = False  # no more waiting on a lease in doubt, and no handover on it
        must_stop = not self._graceful or now >= self._finish_by
        if job_busy and self._cancelled_at is None and must_stop:
            self._cancelled_at = now  # before anything else: the job may be writing on a lapsing lease
            return Step(Act.CANCEL_JOB)
        if not self._notified:
            self._notified = True
            return Step(Act.NOTIFY)
        if job_busy and not self.job_left_running:
            until = self._finish_by if self._cancelled_at is None else self._cancelled_at + self._grace_s
            if now < until:
                return Step(Act.WAIT_FOR_JOB, until - now)
            self.job_left_running = True  # told to stop a grace period ago: release nothing
        if self._graceful and not self.job_left_running and not self._handed_over:
            self._handed_over = True
            return Step(Act.HAND_OVER)
        if not self._renewing_stopped:
            self._renewing_stopped = True
            return Step(Act.STOP_RENEWING)
        self._done = True
        return Step(Act.LET_LEASE_LAPSE if self.job_left_running else Act.REVOKE)
