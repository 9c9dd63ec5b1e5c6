"""One job as the leader's tick loop sees it (a Track: its spec, runner, run record and next slot), and the view of
all jobs' runs that the step-down, the health check and the re-campaign need (AllJobs)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from singleton.core.config import Config
from singleton.core.jobspec import JobSpec
from singleton.core.schedule import Interval, max_lateness_s
from singleton.core.term import RunningJob
from singleton.core.ticker import CLAIM_AHEAD_S, SlotPlan
from singleton.runtime.arming import Armed
from singleton.runtime.runs import RunChain


class Runner(Protocol):
    """What the loop needs of a job's runner (runtime.jobs.JobRunner; tests pass their own)."""

    def busy(self) -> bool: ...

    def running(self) -> RunningJob | None: ...

    def cancel(self) -> None: ...

    def start(self, ctx: Any) -> None: ...


def legacy_spec(config: Config, name: str = "") -> JobSpec:
    """The one every-second job of `job=` / `--job`: its policies come from the Config, as they always did."""
    return JobSpec(name, Interval(1000), timeout_s=config.job_timeout_s, catch_up=config.catch_up,
                   catch_up_window_s=config.catch_up_window_s)


@dataclass
class Track:
    spec: JobSpec
    runner: Any  # Runner; JobRunner adds full() / running_all() / cancel(slot) for max_instances > 1
    chain: RunChain | None
    legacy: bool = False  # the single unnamed job: legacy keys, no job_name label, the handover's last_slot
    plan: SlotPlan | None = None
    claim_tried: int | None = None  # the slot an ahead-of-time claim was last tried for
    step_reported: SlotPlan | None = None
    last_started_slot: int | None = None
    version: int = 0  # bumped whenever the plan changes: older heap entries are stale
    index: int = 0
    armed: Armed | None = None  # its plan's run, handed to a worker at the claim (runtime.handoff)
    settle_at: float = 0.0  # when the loop next looks at the armed run
    _lateness: tuple[int, float] | None = None

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def label(self) -> str | None:
        """The job_name label of its metrics (None: the legacy job's series are unlabelled)."""
        return None if self.legacy else self.spec.name

    @property
    def tag(self) -> str:
        return "" if self.legacy else f" job={self.spec.name}"

    def max_lateness_s(self, slot: int) -> float:
        """Cached per slot: for cron it walks to the next fire time, and the loop asks at the claim and at the slot."""
        if self._lateness is None or self._lateness[0] != slot:
            self._lateness = (slot, max_lateness_s(self.spec.schedule, slot))
        return self._lateness[1]

    def full(self) -> bool:
        """As many runs in flight as its overlap policy allows."""
        if self.spec.max_instances == 1:
            return bool(self.runner.busy())
        return bool(self.runner.full())

    def runs(self) -> list[RunningJob]:
        if self.spec.max_instances == 1:
            running = self.runner.running()
            return [running] if running is not None else []
        return list(self.runner.running_all())

    def cancel(self, slot: int | None = None) -> None:
        if slot is None or self.spec.max_instances == 1:
            self.runner.cancel()
        else:
            self.runner.cancel(slot)

    def event_at(self) -> float:
        """When the loop must next look at this job: the claim point ahead of the slot, or the slot itself."""
        assert self.plan is not None
        if self.armed is not None:
            return self.settle_at
        if self.chain is not None and self.claim_tried != self.plan.slot and \
                self.chain.claim_of(self.plan.slot) is None:
            return self.plan.wake_at - CLAIM_AHEAD_S
        return self.plan.wake_at


class AllJobs:
    """Every job's runs as one: busy while any runs; cancel tells them all."""

    def __init__(self, tracks: list[Track]) -> None:
        self.tracks = tracks

    def busy(self) -> bool:
        return any(t.runner.busy() for t in self.tracks)

    def running(self) -> RunningJob | None:
        """The run that decides the hung-job rules: the longest-cancelled one, else the oldest; for a step-down,
        `cancelled_at` is set only when every run in flight was told to cancel."""
        runs = [r for t in self.tracks for r in t.runs()]
        if not runs:
            return None
        cancelled = [r for r in runs if r.cancelled_at is not None]
        if cancelled and len(cancelled) == len(runs):
            return min(cancelled, key=lambda r: r.cancelled_at or 0.0)
        oldest = min((r for r in runs if r.cancelled_at is None), key=lambda r: r.started_at)
        return RunningJob(oldest.slot, oldest.started_at, None)

    def hung_candidate(self) -> RunningJob | None:
        """The run told to cancel longest ago, if any (for /healthz)."""
        cancelled = [r for t in self.tracks for r in t.runs() if r.cancelled_at is not None]
        return min(cancelled, key=lambda r: r.cancelled_at or 0.0) if cancelled else None

    def cancel(self) -> None:
        for track in self.tracks:
            if track.runner.busy():
                track.cancel()

    def wait_idle(self, timeout_s: float) -> bool:
        for track in self.tracks:
            if track.runner.busy():  # wait on one; the caller asks again
                return bool(track.runner.wait_idle(timeout_s)) and not self.busy()
        return True
