"""Singleton: the public object. Campaigns, follows through a watch, leads through Leadership, stops cleanly."""
from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from singleton.backends.abc import Backend
from singleton.core.clock import Clock, SystemClock
from singleton.core.config import Config
from singleton.core.election import Election, Role
from singleton.core.errors import ConfigError
from singleton.core.jobspec import JobSpec
from singleton.runtime.campaign import Campaigner, Won
from singleton.runtime.jobs import JobFn, TickContext, outcome
from singleton.runtime.sense_listener import SenseListener
from singleton.runtime.shard import metrics as shard_metrics
from singleton.runtime.shard.sharded import ShardedRun
from singleton.runtime.leadership import Leadership
from singleton.runtime.registry import JobRegistry, job_decorator
from singleton.runtime.tracks import AllJobs
from singleton.runtime.listeners import Listeners
from singleton.runtime.signals import LoopSignals
from singleton.core.lease import StepDownReason
from singleton.runtime.status import StatusMixin
from singleton.runtime.telemetry import Stats, register_gauges

log = logging.getLogger("singleton")

ElectedFn = Callable[[int], Any]
SteppedDownFn = Callable[[StepDownReason], Any]


@dataclass
class _AsyncWith:
    """What `async with app:` needs between __aenter__ and __aexit__."""

    body: asyncio.Task[Any] | None
    signals: LoopSignals | None = None
    cancelled_body: bool = False
    exiting: bool = False


class Singleton(StatusMixin):
    """Runs its jobs, each on its schedule, on exactly one replica among all that share `config.name`.

    >>> s = Singleton(Config(endpoints="http://127.0.0.1:2379", name="report"), job=my_job)  # once per second
    >>> s.run()  # blocks until SIGTERM / SIGINT / stop()

    `gate_only=True`: no jobs at all; the replica campaigns, leads, renews and steps down as ever, and the caller
    gates its own work on `is_leader` / `fencing_token` / `on_elected` / `on_stepped_down`.
    """

    def __init__(self, config: Config, job: JobFn | None = None, *, backend: Backend | None = None,
                 clock: Clock | None = None, gate_only: bool = False) -> None:
        self.config = config
        self.clock = clock or SystemClock()
        if backend is None:
            from singleton.backends.etcd import EtcdBackend
            backend = EtcdBackend.from_config(config)
        self.backend = backend
        self._registry = JobRegistry(config)
        self.gate_only = gate_only
        if job is not None:
            self._registry.add_legacy(job)
        self.election = Election()
        self.stats = Stats(config.replica_id)
        self._stop = threading.Event()
        self._resign = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._on_elected: list[ElectedFn] = []
        self._on_stepped_down: list[SteppedDownFn] = []
        self._leadership: Leadership | None = None
        self._leader_seen: tuple[str, int] = ("", 0)  # (replica id, token) of the leader as last seen
        self._last_tick: tuple[int, float] = (0, 0.0)
        self._runner_thread: threading.Thread | None = None
        self._status_changed = threading.Condition()
        self._status_version = 0
        self._listeners = Listeners()
        self._loop: asyncio.AbstractEventLoop | None = None  # the caller's, when started from asyncio
        self._jobs: AllJobs | None = None
        self._sharded: ShardedRun | None = None  # with config.shard: the groups this replica stands for
        self.replica_id = config.replica_id
        self._campaigner = Campaigner(config, self.backend, self.clock, self.election, self._stop, self._see_leader)
        self._campaigner.job_names = lambda: [] if self._registry.legacy else self._registry.names
        register_gauges(self)

    # --- registration and listeners -----------------------------------------------------------------
    def job(self, fn: JobFn | None = None, *, name: str | None = None, every: float | None = None,
            cron: str | None = None, tz: str | None = None, jitter: float = 0.0, overlap: str = "skip",
            max_instances: int | None = None, timeout: float | None = None, catch_up: str | None = None,
            catch_up_window: float | None = None, group: str | None = None) -> Any:
        """Decorator: `@app.job` runs the function every second; `@app.job(every=0.25)`,
        `@app.job(cron="*/5 * * * * *", tz="Europe/Berlin")` and the policies (overlap "skip"/"allow" with
        max_instances, timeout, catch_up "skip"/"coalesce" with catch_up_window, jitter) per job. The name defaults to
        the function's qualified name; two jobs of one name raise JobSpecError (a ConfigError). Policies not given
        come from the Config (job_timeout_s, catch_up, catch_up_window_s). `group`: with sharding, the jobs of one
        group run on one replica (default: each job is a group of its own)."""
        return job_decorator(self._registry, fn, name=name, every=every, cron=cron, tz=tz, jitter=jitter,
                             overlap=overlap, max_instances=max_instances, timeout=timeout, catch_up=catch_up,
                             catch_up_window=catch_up_window, group=group)

    def add_job(self, spec: JobSpec, fn: JobFn) -> JobFn:
        """Register a job from a validated JobSpec (core.jobspec.build_job_spec; the jobs file does this)."""
        return self._registry.add(spec, fn)

    @property
    def job_names(self) -> list[str]:
        return self._registry.names

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
        if self.gate_only and len(self._registry):
            raise ConfigError("gate_only=True runs no jobs: register none, or drop gate_only")
        if not len(self._registry) and not self.gate_only:
            raise TypeError("no job registered: pass job= or decorate a function with @singleton.job "
                            "(or gate_only=True to lead without jobs)")
        listener = self._listen_for_sensing()
        restore = self._install_signal_handlers() if handle_signals and \
            threading.current_thread() is threading.main_thread() else {}
        for name in ([] if self._registry.legacy else self._registry.names):
            self.stats.register_job(name)
        jobs = self._jobs = self._registry.start(self._job_done, self.clock, self._loop)
        self._runner_thread = threading.current_thread()
        log.info("replica %s starting for %s on %s", self.config.replica_id,
                 self.config.groups_prefix + "*" if self.config.shard else self.config.leader_key,
                 ",".join(map(str, self.config.endpoints)))
        try:
            if self.config.shard:
                self._sharded = ShardedRun(self)
                shard_metrics.register(self)
                self._sharded.run()
            while not self._stop.is_set() and not self.config.shard:
                if not self._wait_for_job_to_end(jobs):
                    break
                won = self._campaigner.until_decided()
                if won is None:
                    break
                self._lead(won, jobs)
        finally:
            if self.election.role is not Role.STOPPED:
                self.election.stop()
            self._changed()
            # The step-down already waited for the tick in flight (bounded): no second wait here.
            self._listeners.drain(self.config.stop_timeout_s)
            self._listeners.close()
            self._registry.close()
            if listener is not None:
                listener.close()  # after the handover: only now may the standbys see our sockets close
            self.backend.close()
            for signum, previous in restore.items():
                signal.signal(signum, previous)
            log.info("replica %s stopped", self.config.replica_id)

    def _listen_for_sensing(self) -> SenseListener | None:
        """Fast failover: a listener standbys connect to, for as long as this process runs (its death closes it)."""
        cfg = self.config
        if not cfg.fast_failover or cfg.shard:  # sharding: a crash is taken over when the member lease lapses
            return None
        try:
            listener = SenseListener(cfg.sense_host, cfg.sense_port, cfg.advertise_host).start()
        except OSError as err:
            raise ConfigError(f"cannot listen for fast failover on {cfg.sense_host}:{cfg.sense_port}: "
                              f"{os.strerror(err.errno).lower() if err.errno else err}; give another --sense-port or --sense-host "
                              f"(or --no-fast-failover)") from None
        self._campaigner.sensing = (listener.address, listener.nonce)
        log.info("fast failover: standbys sense this replica's death at %s", listener.address)
        return listener

    def _wait_for_job_to_end(self, jobs: AllJobs) -> bool:
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
        """Hand leadership over now (gracefully), then keep running as a standby. With sharding: every group this
        replica leads, and it does not take them back for a while (runtime/shard/sharded.RESIGN_HOLD_S)."""
        self._resign.set()
        self._wake.set()
        if self._sharded is not None:
            self._sharded.view.poke()

    def __enter__(self) -> Singleton:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def run_async(self, *, handle_signals: bool = True) -> None:
        """Run until stopped, from asyncio. Async jobs and callbacks run on this event loop (so they can use
        clients and locks made on it). Cancelling the task stops the replica gracefully, then re-raises.
        With `handle_signals` (in the main thread, for signals no one else handles) the first SIGTERM/SIGINT
        stops it gracefully and this returns; the previous handlers are back when it does."""
        loop = asyncio.get_running_loop()
        self._use_loop(loop)
        signals = LoopSignals(loop, lambda _signum: self._ask_to_stop()).install() if handle_signals else None
        task = asyncio.ensure_future(asyncio.to_thread(self.run, handle_signals=False))
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            self._ask_to_stop()
            await task  # bounded: the stop finishes or cancels the tick, hands over, revokes
            raise
        finally:
            if signals is not None:
                signals.restore()

    def _use_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = self._listeners.loop = loop

    def _ask_to_stop(self) -> None:
        """stop() without waiting: safe on the event loop."""
        self._stop.set()
        self._wake.set()

    async def __aenter__(self) -> Singleton:
        """Start in the background. In the main thread, a first SIGTERM/SIGINT that no one else handles (uvicorn
        and the like install their own and end the lifespan) stops the replica and cancels the body of the
        `async with`; that cancel ends at __aexit__, so the code after the block goes on."""
        loop = asyncio.get_running_loop()
        self._use_loop(loop)
        self.start()
        body = asyncio.current_task()
        state = self._aio = _AsyncWith(body)

        def on_signal(_signum: signal.Signals) -> None:
            self._ask_to_stop()
            if body is not None and not state.exiting:
                state.cancelled_body = True
                body.cancel()

        state.signals = LoopSignals(loop, on_signal).install()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, *exc: object) -> bool:
        state = self._aio
        state.exiting = True
        try:
            await asyncio.to_thread(self.stop)
        finally:
            if state.signals is not None:
                state.signals.restore()  # after the stop: a SIGTERM during the handover must not kill us
        if state.cancelled_body and state.body is not None:
            # Our own cancel (the signal's) is spent here; anyone else's still propagates.
            return state.body.uncancel() == 0 and exc_type is asyncio.CancelledError
        return False

    def _install_signal_handlers(self) -> dict[int, Any]:
        def handler(signum: int, _frame: object) -> None:
            if self._stop.is_set():  # a second signal: the operator insists
                os._exit(128 + signum)
            log.info("received %s: stopping gracefully", signal.Signals(signum).name)
            self.stop()

        return {signum: signal.signal(signum, handler) for signum in (signal.SIGTERM, signal.SIGINT)}

    # --- leading ---------------------------------------------------------------------------------------
    def _lead(self, won: Won, jobs: AllJobs) -> None:
        cfg, term = self.config, won.term
        self._resign.clear()
        self.stats.won(won.vacant_for_s)
        log.info("elected leader of %s replica=%s token=%d", cfg.leader_key, cfg.replica_id, term.fencing_token)
        tracks = self._registry.tracks(self.backend, self.clock, term.fencing_token, won.result.extra.get(cfg.run_key))
        leadership = Leadership(cfg, self.backend, self.clock, self.election, term, None, self.stats, self._wake,
                                self._requested_step_down, self._stepping_down, tracks=tracks)
        leadership.measure_skew(won.handover.written_at_unix_s if won.handover else None, won.vacant_for_s)
        self._leadership = leadership
        self._changed()
        self._listeners.post(self._on_elected, term.fencing_token)  # never waits: the keepalive starts now
        try:
            outcome = leadership.run(won.sent_at, won.handover_last_slot, won.result.revision, self.resign,
                                     won.handover)
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
        self.stats.job_done(duration_s, failed=error is not None, job=None if self._registry.legacy else ctx.job)
        leadership = self._sharded.leadership_for(ctx.job) if self._sharded is not None else self._leadership
        chain = leadership.chain_for(ctx.job) if leadership is not None else None
        if chain is not None:  # its outcome goes into the next claim
            chain.finished(ctx.slot, ctx.scheduled_at + ctx.lateness_s, duration_s, outcome(ctx, error),
                                      "" if error is None else f"{type(error).__name__}: {error}",
                                      ctx.coalesced_slots[0] if ctx.coalesced_slots else 0)
        if self._stop.is_set() or self._resign.is_set():
            self._wake.set()  # a draining leader hands over at the first idle moment
        if error is not None:
            log.error("job %sfailed in slot %d replica=%s token=%d", "" if self._registry.legacy else f"{ctx.job} ",
                      ctx.slot, ctx.replica_id, ctx.fencing_token, exc_info=error)
