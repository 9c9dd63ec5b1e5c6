"""The jobs API of Singleton on the in-memory backend: registration forms, names, key layout, per-job history and
labels, and a Singleton that gates nothing but leadership (gate_only)."""
from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from singleton import Config, ConfigError, MemoryBackend, Singleton, TickContext
from singleton.core.jobspec import JobSpecError, build_job_spec
from singleton.core.records import decode_entry, decode_run
from singleton.core.timings import FAST
from singleton.testing.recorder import wait_for


def config(replica: str, **extra: Any) -> Config:
    return Config(endpoints="127.0.0.1:2379", name="api", replica_id=replica, **{**FAST.config_kwargs(), **extra})


def keys(backend: MemoryBackend, prefix: str) -> list[str]:
    return [kv.key for kv in backend.get_prefix(prefix, 1.0)]


def test_a_bare_decorator_is_the_legacy_job_with_the_legacy_keys() -> None:
    backend = MemoryBackend()
    app = Singleton(config("a"), backend=backend)
    seen: list[TickContext] = []

    @app.job
    def every_second(ctx: TickContext) -> None:
        seen.append(ctx)

    with app:
        wait_for(lambda: len(seen) >= 2, 5, "two ticks")
    cfg = app.config
    assert cfg.job_run_key(None) == cfg.run_key == "/singleton/api/run"
    assert keys(backend, "/singleton/api/jobs/") == []  # nothing in the new layout
    record = decode_run(backend.get(cfg.run_key, 1.0)[0].value)  # type: ignore[union-attr]
    assert record is not None and record.slot >= seen[1].slot
    assert seen[0].job == "test_a_bare_decorator_is_the_legacy_job_with_the_legacy_keys.every_second"
    assert not app.stats.job_ticks  # the legacy job's series carry no job_name label


def test_several_jobs_each_keep_their_own_record_history_and_counters() -> None:
    backend = MemoryBackend()
    app = Singleton(config("a"), backend=backend)
    runs: dict[str, list[int]] = {"quarter": [], "second": [], "async": []}

    @app.job(name="quarter", every=0.25)
    def quarter(ctx: TickContext) -> None:
        runs["quarter"].append(ctx.slot)

    @app.job(name="second", every=1, timeout=5)
    def every_second(ctx: TickContext) -> None:
        runs["second"].append(ctx.slot)
        if len(runs["second"]) == 1:
            raise RuntimeError("first run fails")

    async def on_the_loop(ctx: TickContext) -> None:
        await asyncio.sleep(0)
        runs["async"].append(ctx.slot)

    app.add_job(build_job_spec("async", every=0.5), on_the_loop)
    assert app.job_names == ["quarter", "second", "async"]
    with app:
        wait_for(lambda: len(runs["second"]) >= 3, 6, "three every-second runs")
    cfg = app.config
    for name, slots in runs.items():
        assert slots == sorted(set(slots)) and slots, name
        record = decode_run(backend.get(cfg.job_run_key(name), 1.0)[0].value)  # type: ignore[union-attr]
        assert record is not None and record.slot >= slots[-1]
        entries = [decode_entry(kv.value) for kv in backend.get_prefix(cfg.job_history_prefix(name), 1.0)]
        assert {e.slot for e in entries if e is not None and e.outcome in ("ok", "failed")} <= set(slots)
    history = [decode_entry(kv.value) for kv in backend.get_prefix(cfg.job_history_prefix("second"), 1.0)]
    assert any(e is not None and e.outcome == "failed" and "first run fails" in e.error for e in history)
    assert app.stats.job_ticks["second", "failed"] == 1 and app.stats.job_ticks["quarter", "ok"] >= 4
    assert backend.get(cfg.run_key, 1.0)[0] is None  # the legacy key stays unused


def test_job_names_must_be_unique_and_valid() -> None:
    app = Singleton(config("a"), backend=MemoryBackend())
    app.job(every=2)(lambda ctx: None)
    with pytest.raises(JobSpecError, match="lambda': name: a job of this name is already registered"):
        app.job(every=3)(lambda ctx: None)
    with pytest.raises(JobSpecError, match="job 'bad': every: .*at least 0.1 s"):
        app.job(name="bad", every=0.05)(lambda ctx: None)
    with pytest.raises(JobSpecError, match="tz"):
        app.job(name="zone", cron="* * * * * *", tz="Mars/Olympus")(lambda ctx: None)
    with pytest.raises(ConfigError, match="gate_only"):
        Singleton(config("b"), lambda ctx: None, backend=MemoryBackend(), gate_only=True).run()


def test_a_gate_only_replica_leads_hands_over_and_claims_nothing() -> None:
    backend = MemoryBackend()
    first = Singleton(config("a"), backend=backend, gate_only=True)
    second = Singleton(config("b"), backend=backend, gate_only=True)
    elected: list[tuple[str, int]] = []
    lock = threading.Lock()
    for app in (first, second):
        app.on_elected(lambda token, app=app: (lock.acquire(), elected.append((app.replica_id, token)),
                                                lock.release()))
    first.start()
    wait_for(lambda: first.is_leader and first.fencing_token is not None, 5, "the first to lead")
    with second:
        wait_for(lambda: second.role.value == "follower", 5, "a standby")
        token = first.fencing_token
        first.stop()
        wait_for(lambda: second.is_leader, 5, "the standby to take over")
        assert second.fencing_token is not None and token is not None and second.fencing_token > token
    wait_for(lambda: len(elected) == 2, 5, "both elections heard")
    assert [r for r, _ in elected] == ["a", "b"]
    assert keys(backend, "/singleton/api/jobs/") == [] and backend.get("/singleton/api/run", 1.0)[0] is None
    assert backend.live_lease_ids() == []
