"""Singleton: the public object. Campaigns, follows through a watch, leads through Leadership, stops cleanly."""
from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
from collections.abc import Callable
from typing import Any

import tenacity

from singleton.backends.abc import Backend, CampaignResult
from singleton.core.clock import Clock, SystemClock
from singleton.core.config import Config
from singleton.core.election import Election, Role, Term
from singleton.core.errors import BackendError, ConfigError, WatchCompacted
from singleton.runtime.jobs import JobFn, JobRunner, TickContext
from singleton.runtime.leadership import Leadership
from singleton.runtime.listeners import Listeners
from singleton.core.lease import LeaseKeeper, StepDownReason
from singleton.core.records import decode_handover, decode_leader, leader_record
from singleton.runtime.status import StatusMixin
from singleton.runtime.telemetry import Stats, register_gauges, tracer

log = logging.getLogger("singleton")

ElectedFn = Callable[[int], Any]
SteppedDownFn = Callable[[StepDownReason], Any]


class Singleton(StatusMixin):
    """Runs `job` once per second on exactly one replica among all that share `config.name`.

    >>> s = Singleton(Config(endpoints="http://127.0.0.1:2379", name="report"), job=my_job)
    >>> s.run()  # blocks until SIGTERM / SIGINT / stop()
    """

    def __init__(self, config: Config, job: JobFn | None = None, *, backend: Backend | None = None,
                 clock: Clock | None = None) -> None:
        self.config = config
        self.clock = clock or SystemClock()
        if backend is None:
            from singleton.backends.etcd import EtcdBackend
            backend = EtcdBackend.from_config(config)
        self.backend = backend
        self._job = job
        self.election = Election()
        self.stats = Stats(config.replica_id)
        self._stop = threading.Event()
        self._resign = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._on_elected: list[ElectedFn] = []
        self._on_stepped_down: list[SteppedDownFn] = []
        self._leadership: Leadership | None = None
        self._vacancy_revision: int | None = None  # revision of the leader-key delete that ended our wait
        self._vacancy_seen_at: float | None = None  # monotonic time we saw it
        self._leader_seen: tuple[str, int] = ("", 0)  # (replica id, token) of the leader as last seen
        self._last_tick: tuple[int, float] = (0, 0.0)
        self._runner_thread: threading.Thread | None = None
        self._status_changed = threading.Condition()
        self._status_version = 0
        self._listeners = Listeners()
        self._loop: asyncio.AbstractEventLoop | None = None  # the caller's, when started from asyncio
        self._jobs: JobRunner | None = None
        self.replica_id = config.replica_id
        register_gauges(self)

    # --- registration and listeners -----------------------------------------------------------------
    def job(self, fn: JobFn) -> JobFn:
        """Decorator: register the function run on every tick (one job per Singleton)."""
        if self._job is not None:
            raise ConfigError(f"a job is already registered ({getattr(self._job, '__qualname__', self._job)!r}); "
                              f"one Singleton runs one job")
        self._job = fn
        return fn

    def on_elected(self, fn: ElectedFn) -> ElectedFn:
        self._on_elected.append(fn)
        return fn

    def on_stepped_down(self, fn: SteppedDownFn) -> SteppedDownFn:
        self._on_stepped_down.append(fn)
        return fn

    @property
    def role(self) -> Role:
        return self.election.role

    @property
    def fencing_token(self) -> int | None:
        term = self.election.term
        return term.fencing_token if term else None

    # --- running ---------------------------------------------------------------------------------------
    def run(self, *, handle_signals: bool = True) -> None:
        """Block until stopped. In the main thread, SIGTERM and SIGINT stop it gracefully; the previous
        handlers are back when it returns."""
        if self._job is None:
            raise TypeError("no job registered: pass job= or decorate a function with @singleton.job")
        restore = self._install_signal_handlers() if handle_signals and \
            threading.current_thread() is threading.main_thread() else {}
        jobs = self._jobs = JobRunner(self._job, self._job_done, self.clock, loop=self._loop)
        self._runner_thread = threading.current_thread()
        log.info("replica %s starting for %s on %s", self.config.replica_id, self.config.leader_key,
                 ",".join(map(str, self.config.endpoints)))
        try:
            while not self._stop.is_set():
                if not self._wait_for_job_to_end(jobs):
                    break
                won = self._campaign_until_decided()
                if won is None:
                    break
                term, result, sent_at = won
                self._lead(term, result, sent_at, jobs)
        finally:
            if self.election.role is not Role.STOPPED:
                self.election.stop()
            self._changed()
            # The step-down already waited for the tick in flight (bounded): no second wait here.
            self._listeners.drain(self.config.stop_timeout_s)
            self._listeners.close()
            jobs.close()
            self.backend.close()
            for signum, previous in restore.items():
                signal.signal(signum, previous)
            log.info("replica %s stopped", self.config.replica_id)

    def _wait_for_job_to_end(self, jobs: JobRunner) -> bool:
        """A job that ignored its cancel still runs: do not stand for election beside it. False if stopped."""
        running = jobs.running()
        if running is None:
            return True
        log.warning("not standing for election while the tick of slot %d still runs (it ignored its cancel)",
                    running.slot)
        while not self._stop.is_set():
            if jobs.wait_idle(0.5):
                log.info("the tick of slot %d has ended; standing for election again", running.slot)
                return True
        return False

    def start(self) -> None:
        """Run in a background thread."""
        if self._thread is not None:
            raise RuntimeError("already started")
        self._thread = threading.Thread(target=self.run, kwargs={"handle_signals": False}, daemon=True,
                                        name=f"singleton-{self.config.name}")
        self._thread.start()

    def stop(self, timeout_s: float | None = None) -> None:
        """Graceful: finish or cancel the tick in flight, hand over, revoke the lease."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout_s if timeout_s is not None else self.config.stop_timeout_s + 10)

    def resign(self) -> None:
        """Hand leadership over now (gracefully), then keep running as a standby."""
        self._resign.set()
        self._wake.set()

    def __enter__(self) -> Singleton:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def run_async(self) -> None:
        """Run until stopped, from asyncio. Async jobs and callbacks run on this event loop (so they can use
        clients and locks made on it). Cancelling the task stops the replica gracefully, then re-raises."""
        self._use_loop(asyncio.get_running_loop())
        task = asyncio.ensure_future(asyncio.to_thread(self.run, handle_signals=False))
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            self._stop.set()
            self._wake.set()
            await task  # bounded: the stop finishes or cancels the tick, hands over, revokes
            raise

    def _use_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = self._listeners.loop = loop

    async def __aenter__(self) -> Singleton:
        self._use_loop(asyncio.get_running_loop())
        self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.to_thread(self.stop)

    def _install_signal_handlers(self) -> dict[int, Any]:
        def handler(signum: int, _frame: object) -> None:
            if self._stop.is_set():  # a second signal: the operator insists
                os._exit(128 + signum)
            log.info("received %s: stopping gracefully", signal.Signals(signum).name)
            self.stop()

        return {signum: signal.signal(signum, handler) for signum in (signal.SIGTERM, signal.SIGINT)}

    # --- following -----------------------------------------------------------------------------------
    def _retrying(self) -> tenacity.Retrying:
        # tenacity decides when to try again; the stop event makes its sleep interruptible.
        return tenacity.Retrying(
            retry=tenacity.retry_if_exception_type(BackendError),
            wait=tenacity.wait_exponential_jitter(multiplier=0.1, max=self.config.campaign_backoff_max_s, jitter=0.2),
            stop=tenacity.stop_when_event_set(self._stop),
            sleep=self._interruptible_sleep,
            before_sleep=lambda rs: log.warning("etcd not usable (%s); retrying in %.1f s", rs.outcome.exception()
                                                if rs.outcome else "?", rs.upcoming_sleep),
            reraise=False,
        )

    def _interruptible_sleep(self, seconds: float) -> None:
        self._stop.wait(seconds)

    def _campaign_until_decided(self) -> tuple[Term, CampaignResult, float] | None:
        """Campaign until we win (returns the term) or are stopped (None). A lost campaign waits on the watch."""
        while not self._stop.is_set():
            try:
                outcome = self._retrying()(self._campaign_once)
            except tenacity.RetryError:
                return None
            term, result, sent_at = outcome
            if term is not None:
                return term, result, sent_at
            self._wait_for_vacancy(result)
        return None

    def _campaign_once(self) -> tuple[Term | None, CampaignResult, float]:
        with tracer.start_as_current_span("singleton.campaign", attributes={"singleton.replica_id":
                                                                           self.config.replica_id}) as span:
            term, result, sent_at = self._campaign_attempt()
            span.set_attribute("singleton.won", term is not None)
            span.set_attribute("singleton.fencing_token", result.fencing_token)
        self._see_leader(result.leader)
        return term, result, sent_at

    def _campaign_attempt(self) -> tuple[Term | None, CampaignResult, float]:
        cfg = self.config
        self.election.campaign()
        sent_at = self.clock.monotonic()
        try:
            lease = self.backend.grant_lease(int(cfg.lease_ttl_s), cfg.call_timeout_s)
        except BackendError:
            self.election.campaign_failed()
            raise
        try:
            result = self.backend.campaign(cfg.leader_key, leader_record(cfg.replica_id, lease.lease_id,
                                                                         self.clock.wall()),
                                           lease.lease_id, cfg.call_timeout_s, also_read=(cfg.handover_key,))
        except BackendError:
            self._revoke_quietly(lease.lease_id)  # outcome unknown: revoking also removes our key if written
            self.election.campaign_failed()
            raise
        if result.won:
            keeper = LeaseKeeper(lease.lease_id, lease.ttl_s, sent_at, min_remaining_ttl_s=cfg.min_remaining_ttl_s,
                                 max_failed_renewals=cfg.max_failed_renewals)
            return self.election.won(result.fencing_token, keeper), result, sent_at
        self._revoke_quietly(lease.lease_id)  # a lost campaign must not leak its lease
        self.election.lost()
        return None, result, sent_at

    def _revoke_quietly(self, lease_id: int) -> None:
        try:
            self.backend.revoke_lease(lease_id, self.config.call_timeout_s)
        except BackendError as err:
            log.warning("could not revoke unused lease %x (it expires by itself): %s", lease_id, err)

    def _wait_for_vacancy(self, lost: CampaignResult) -> None:
        """Watch the leader key until it is deleted (or we stop). No polling decides who leads."""
        self._vacancy_revision = None
        if lost.leader is None:
            return  # vanished between our transaction and now: campaign again at once
        holder = lost.leader
        log.info("standing by: token %d holds %s", holder.create_revision, self.config.leader_key)
        record = decode_leader(holder.value)
        if record is not None and record.replica_id == self.config.replica_id:
            # Not us (our lease lost the campaign): two replicas were given the same id.
            log.error("another replica leads with our id %r (lease %x): give every replica its own --id",
                      record.replica_id, holder.lease_id)
        start = lost.revision + 1
        while not self._stop.is_set():
            try:
                for event in self.backend.watch(self.config.leader_key, start, self._stop):
                    start = event.revision + 1
                    if event.deleted:
                        log.info("leader key deleted at revision %d: campaigning", event.revision)
                        self._vacancy_revision, self._vacancy_seen_at = event.revision, self.clock.monotonic()
                        self._see_leader(None)
                        return
                    self._see_leader(event.kv)
                    log.info("leader changed: %s token %d", self._leader_seen[0], event.kv.create_revision)
                return
            except WatchCompacted:
                try:
                    kv, revision = self._retrying()(self.backend.get, self.config.leader_key, self.config.call_timeout_s)
                except tenacity.RetryError:
                    return
                if kv is None:
                    return
                start = revision + 1

    # --- leading ---------------------------------------------------------------------------------------
    def _lead(self, term: Term, result: CampaignResult, sent_at: float, jobs: JobRunner) -> None:
        cfg = self.config
        self._resign.clear()
        vacant_for = None if self._vacancy_seen_at is None else self.clock.monotonic() - self._vacancy_seen_at
        self._vacancy_seen_at = None
        self.stats.won(vacant_for)
        log.info("elected leader of %s replica=%s token=%d", cfg.leader_key, cfg.replica_id, term.fencing_token)
        leadership = Leadership(cfg, self.backend, self.clock, self.election, term, jobs, self.stats, self._wake,
                                self._requested_step_down, self._stepping_down)
        self._leadership = leadership
        self._changed()
        self._listeners.post(self._on_elected, term.fencing_token)  # never waits: the keepalive starts now
        try:
            outcome = leadership.run(sent_at, self._handover_slot(result), result.revision, self.resign)
        finally:
            if leadership.last_started_slot:
                self._last_tick = (leadership.last_started_slot, leadership.last_tick_wall or 0.0)
            self._leadership = None
            self._see_leader(None)
        if outcome.reason is StepDownReason.SHUTDOWN:
            self.election.stop()
            return
        self.election.stepped_down()
        self._changed()
        if self._stop.is_set():
            self.election.stop()
        elif outcome.reason in (StepDownReason.RESIGNED, StepDownReason.TICKER_FAILED):
            # Resigned: give the standbys the first shot at the vacancy. Failed: do not retry in a tight loop.
            self._stop.wait(1.0)

    def _handover_slot(self, result: CampaignResult) -> int | None:
        """The predecessor's last slot, only if its handover is the very delete we were woken by."""
        kv = result.extra.get(self.config.handover_key)
        if kv is None or self._vacancy_revision is None or kv.mod_revision != self._vacancy_revision:
            return None
        handover = decode_handover(kv.value)
        return handover.last_slot if handover and handover.last_slot > 0 else None

    def _stepping_down(self, reason: StepDownReason) -> None:
        self._changed()
        self._listeners.post(self._on_stepped_down, reason)

    def _requested_step_down(self) -> StepDownReason | None:
        if self._stop.is_set():
            return StepDownReason.SHUTDOWN
        if self._resign.is_set():
            return StepDownReason.RESIGNED
        return None

    def _job_done(self, ctx: TickContext, duration_s: float, error: BaseException | None) -> None:
        self.stats.job_done(duration_s, failed=error is not None)
        if error is not None:
            log.error("job failed in slot %d replica=%s token=%d", ctx.slot, ctx.replica_id, ctx.fencing_token,
                      exc_info=error)
