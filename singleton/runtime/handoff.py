"""The tick loop's side of armed runs (runtime.arming): arm a sync run at its claim, settle it after its instant,
disarm what has not started when the term ends, a graceful stop begins or a pause arrives (mixed into Leadership).

The loop wakes for an armed job only SETTLE_AFTER_S after its instant: the worker starts the job meanwhile, and a
loop waking at the same instant would only compete with it for the GIL. A run that was disarmed or refused is judged
again on the loop's own path (runtime.ticking), exactly as a claimed slot that was never armed: run late if the lease,
the time and the job's controls still allow, else skipped and counted.
"""
from __future__ import annotations

from singleton.core.ticker import next_schedule_plan
from singleton.runtime.arming import Armed, ArmedState
from singleton.runtime.claiming import TermStart, handled_wall
from singleton.runtime.jobs import TickContext
from singleton.runtime.pool import PoolFull
from singleton.runtime.tracks import Track

SETTLE_AFTER_S = 0.005


class HandOff(TermStart):
    """Methods of Leadership, beside the tick loop (runtime.ticking.Ticker)."""

    def _held(self, track: Track, slot: int, wall: float) -> str | None:
        """Why an operator keeps `slot` from running (paused, skip_next; runtime.control); None: it may run."""
        return None

    def _context(self, track: Track, slot: int, scheduled_at: float, lateness_s: float | None,
                 coalesced: tuple[int, int] | None = None) -> TickContext:
        raise NotImplementedError  # runtime.ticking.Ticker

    def _started(self, track: Track, slot: int, lateness_s: float | None, wall: float) -> None:
        raise NotImplementedError  # runtime.ticking.Ticker

    def _arm(self, track: Track) -> None:
        """`track`'s slot was just claimed: hand its run to a worker now, to start at the slot's instant. Not armed
        (the loop starts it at the slot, as before): an async job, a job still running, a held slot, a stop."""
        plan, chain, arm = track.plan, track.chain, getattr(track.runner, "arm", None)
        if arm is None or plan is None or chain is None or track.armed is not None:
            return
        claimed = chain.claimed
        if claimed is None or claimed[0] != plan.slot or self._drain_started is not None or \
                self._stop_reason() is not None:
            return
        now = self.clock.monotonic()
        if track.full() or self._held(track, plan.slot, self.clock.wall()) is not None or \
                self.election.check(now) is not None:
            return
        keeper, stop = self.term.keeper, self._stop_reason

        def may_start(at: float) -> bool:
            # The worker's check at the instant: in memory only (two flags, a tuple, the lease's deadline).
            return stop() is None and chain.claimed is claimed and keeper.step_down_reason(at) is None

        armed = Armed(plan.slot, plan.wake_at, track.max_lateness_s(plan.slot), self.clock, may_start)
        # Visible before the worker has it, so a pause the control watch applies from now on disarms it there; one
        # applied before is seen by the check below.
        track.armed, track.settle_at = armed, plan.wake_at + SETTLE_AFTER_S
        try:
            armed_ok = arm(self._context(track, plan.slot, plan.scheduled_at, 0.0), armed)
        except PoolFull:
            armed_ok = False  # the loop tries again at the slot, and skips and counts it if no worker is free then
        except BaseException:
            track.armed = None  # never reached a worker (no thread could start: the term ends on it)
            raise
        if not armed_ok:
            track.armed = None
        elif self._held(track, plan.slot, self.clock.wall()) is not None:
            armed.disarm()

    def _settle(self, track: Track, mono: float, wall: float) -> bool | None:
        """After an armed run's instant. True: it started (counted as a run); False: it never will (the loop judges
        the slot on its own path); None: its worker has not woken yet (a loaded machine): look again shortly."""
        armed = track.armed
        assert armed is not None
        state = armed.settled()
        if state is ArmedState.ARMED:
            if mono - armed.at < armed.max_lateness_s:
                track.settle_at = mono + SETTLE_AFTER_S
                return None
            state = ArmedState.DISARMED if armed.disarm() else ArmedState.STARTED
        track.armed = None
        if state is ArmedState.STARTED:
            self._started(track, armed.slot, armed.lateness_s, wall - (mono - (armed.started_at or mono)))
            return True
        return False

    def _disarm_unstarted(self) -> None:
        """A graceful stop begins: runs not yet started never will (they are no longer busy); the loop settles
        those that did."""
        for track in self.tracks:
            armed = track.armed
            if armed is not None:
                armed.disarm()

    def _disarm_all(self) -> None:
        """The term ends: nothing armed starts any more. One that had started is a run in flight like any other,
        and the job's plan moves past it, so the handover names the slot after it."""
        clock = self.clock
        for track in self.tracks:
            armed, track.armed = track.armed, None
            if armed is None or armed.disarm():
                continue
            mono, wall = clock.monotonic(), clock.wall()
            self._started(track, armed.slot, armed.lateness_s, wall - (mono - (armed.started_at or mono)))
            assert track.plan is not None
            track.plan = next_schedule_plan(track.spec.schedule, track.plan.slot, wall, mono, track.name,
                                            track.spec.jitter_s, handled_wall(track.plan, wall, mono))

    def _control_changed(self, job: str) -> None:
        """On the control watch's thread, as soon as a job's control record changed: a pause (or a skip) of a run
        that is armed disarms it before its worker wakes; the loop then counts the slot as held."""
        wall = self.clock.wall()
        for track in self.tracks:
            armed = track.armed
            if armed is not None and ("" if track.legacy else track.name) == job and \
                    self._held(track, armed.slot, wall) is not None:
                armed.disarm()
