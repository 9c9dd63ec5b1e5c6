"""The jobs of one Singleton: registered through `job=`, `@app.job`, `@app.job(...)` or `add_job(spec, fn)`, and
turned into the runners and tracks of each leadership term.

Keys, chosen for rolling upgrades: a Singleton whose only job came through `job=` / `--job` / a bare `@app.job`
(the *legacy* job) keeps `<prefix>/<name>/run` and `<prefix>/<name>/history/`, and its metrics carry no job_name
label, exactly as before several jobs existed. Every other job, and every job of a Singleton with several, uses
`<prefix>/<name>/jobs/<job>/run` and `.../history/` (Config.job_run_key / job_history_prefix) and the label
`job_name=<job>`.
"""
from __future__ import annotations

import asyncio
from dataclasses import dataclass, replace
from typing import Any

from singleton.backends.abc import Backend, KeyValue
from singleton.core.clock import Clock
from singleton.core.config import Config
from singleton.core.jobspec import JobSpec, JobSpecError, build_job_spec, default_job_name
from singleton.runtime.jobs import AsyncLoop, DoneFn, JobFn, JobRunner, is_async_job
from singleton.runtime.pool import WorkerPool
from singleton.runtime.runs import RunChain
from singleton.runtime.tracks import AllJobs, Track, legacy_spec


@dataclass
class _Job:
    spec: JobSpec
    fn: JobFn
    legacy: bool  # registered without a name or schedule (job=, --job, bare @app.job)


class JobRegistry:
    def __init__(self, config: Config) -> None:
        self.config = config
        self._jobs: list[_Job] = []
        self.runners: dict[str, JobRunner] = {}
        self.pool: WorkerPool | None = None
        self.async_loop: AsyncLoop | None = None

    def __len__(self) -> int:
        return len(self._jobs)

    @property
    def names(self) -> list[str]:
        return [j.spec.name for j in self._jobs]

    @property
    def legacy(self) -> bool:
        """The one job came through the legacy path: legacy keys and unlabelled metrics. Never with sharding:
        every job then has its own keys, whatever group it is in."""
        return len(self._jobs) == 1 and self._jobs[0].legacy and not self.config.shard

    def groups(self) -> dict[str, list[str]]:
        """Sharding: each group and its jobs, in registration order."""
        out: dict[str, list[str]] = {}
        for job in self._jobs:
            out.setdefault(job.spec.group_name, []).append(job.spec.name)
        return out

    def add_legacy(self, fn: JobFn) -> JobFn:
        self._add(_Job(legacy_spec(self.config, default_job_name(fn)), fn, True))
        return fn

    def add(self, spec: JobSpec, fn: JobFn) -> JobFn:
        if not callable(fn):
            raise JobSpecError(spec.name, "callable", f"is not callable ({fn!r})")
        self._add(_Job(replace(spec, target=fn), fn, False))
        return fn

    def add_with(self, fn: JobFn, *, name: str | None, every: float | None, cron: str | None, tz: str | None,
                 jitter: float, overlap: str, max_instances: int | None, timeout: float | None,
                 catch_up: str | None, catch_up_window: float | None, group: str | None = None) -> JobFn:
        """`@app.job(...)`: policies not given default to the Config's (job_timeout_s, catch_up, window)."""
        cfg = self.config
        spec = build_job_spec(name if name is not None else default_job_name(fn), fn, every=every, cron=cron, tz=tz,
                              jitter=jitter, overlap=overlap, max_instances=max_instances,
                              timeout=cfg.job_timeout_s if timeout is None else timeout,
                              catch_up=cfg.catch_up if catch_up is None else catch_up,
                              catch_up_window=cfg.catch_up_window_s if catch_up_window is None else catch_up_window,
                              group=group)
        return self.add(spec, fn)

    def _add(self, job: _Job) -> None:
        if job.spec.name in self.names:
            raise JobSpecError(job.spec.name, "name", "a job of this name is already registered (give each job its "
                               "own name=)")
        self._jobs.append(job)

    # --- per process, then per term ----------------------------------------------------------------
    def start(self, on_done: DoneFn, clock: Clock, loop: asyncio.AbstractEventLoop | None) -> AllJobs:
        """Make each job's runner, the shared async loop and the worker pool (its threads started now, so the first
        run does not wait for one). Returns the view of all runs, with throwaway tracks for it."""
        self.async_loop = AsyncLoop(loop)
        sync_slots = sum(j.spec.max_instances for j in self._jobs if not is_async_job(j.fn))
        self.pool = WorkerPool(min(self.config.workers, sync_slots), demand=sync_slots).start() \
            if sync_slots else None
        self.runners = {j.spec.name: JobRunner(j.fn, on_done, clock, max_instances=j.spec.max_instances,
                                               pool=self.pool, async_loop=self.async_loop) for j in self._jobs}
        return AllJobs([Track(j.spec, self.runners[j.spec.name], None, self.legacy) for j in self._jobs])

    def tracks(self, backend: Backend, clock: Clock, token: int, legacy_record: KeyValue | None,
               group: str | None = None) -> list[Track]:
        """This term's view of every job (of `group` only, with sharding), each with its own run record (None when
        the record is off). A group's run records are guarded by the group's leader key."""
        cfg, legacy = self.config if group is None else self.config.for_group(group), self.legacy
        out = []
        for job in self._jobs:
            if group is not None and job.spec.group_name != group:
                continue
            chain = RunChain(cfg, backend, clock, token, legacy_record if legacy else None,
                             None if legacy else job.spec.name) if cfg.run_record else None
            out.append(Track(job.spec, self.runners[job.spec.name], chain, legacy))
        return out

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()
        if self.async_loop is not None:
            self.async_loop.close()


def job_decorator(registry: JobRegistry, fn: JobFn | None, **options: Any) -> Any:
    """`@app.job` / `@app.job()` (no option: the legacy every-second job) and `@app.job(...)`."""
    defaults = {"jitter": 0.0, "overlap": "skip", "group": None}
    plain = all(value == defaults.get(key) for key, value in options.items())

    def register(f: JobFn) -> JobFn:
        return registry.add_legacy(f) if plain else registry.add_with(f, **options)

    return register(fn) if fn is not None else register
