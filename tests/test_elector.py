"""The Elector gates someone else's scheduler by singleton's leadership: state, checks, callbacks, async changes,
and the APScheduler example (examples/apscheduler-gated) handing over between two replicas on a real etcd."""
from __future__ import annotations

import asyncio
import sys
import threading
import time
from pathlib import Path

import pytest

from singleton import Config, MemoryBackend, StepDownReason
from singleton.core.timings import FAST
from singleton.dev.embedded import EtcdCluster
from singleton.runtime.elector import Elector, LeadershipChange, NotLeader
from singleton.testing.recorder import wait_for

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "apscheduler-gated"


def config(replica: str, endpoints: object = "127.0.0.1:2379", name: str = "gate") -> Config:
    return Config(endpoints=endpoints, name=name, replica_id=replica, **FAST.config_kwargs())  # type: ignore[arg-type]


def test_only_the_leader_passes_the_gate_and_a_standby_takes_over_on_stop() -> None:
    backend = MemoryBackend()
    a, b = Elector(config("a"), backend=backend), Elector(config("b"), backend=backend)
    ran: list[str] = []
    run_a, run_b = a.guard(lambda: ran.append("a")), b.guard(lambda: ran.append("b"))
    elected: list[int] = []
    b.on_elected(elected.append)
    assert not a.is_leader and a.fencing_token is None and not a.wait_until_leader(0.05)
    a.start()
    try:
        assert a.wait_until_leader(10)
        b.start()  # after a leads, so that b stands by
        token = a.check()
        assert a.fencing_token == token and a.still_leader(token) and not b.still_leader()
        assert not b.wait_until_leader(0.3)  # bounded: it returns, and b stands by
        assert run_a() is None and run_b() is None and ran == ["a"]  # b's run was skipped
        with pytest.raises(NotLeader, match="gate: not the leader"):
            b.check()
        assert a.guarded_put("/gate/out", "from a", token)
        a.stop()  # graceful: hands over
        assert b.wait_until_leader(10)
        new = b.check()
        assert new > token
        wait_for(lambda: elected == [new], 5, "b's on_elected")
        assert not a.still_leader(token)
        with pytest.raises(NotLeader):
            a.guarded_put("/gate/out", "stale", token)  # refused before etcd is asked
        with pytest.raises(NotLeader, match=f"not the leader of term {token} \\(now {new}\\)"):
            b.check(token)  # an earlier term's token is refused, even by the replica that leads now
        run_a(), run_b()
        assert ran == ["a", "b"]
        kv, _ = backend.get("/gate/out", 1.0)
        assert kv is not None and kv.value == b"from a"
    finally:
        a.stop()
        b.stop()


def test_changes_yield_the_state_then_each_change_and_async_guards_work() -> None:
    backend = MemoryBackend()

    async def scenario() -> list[LeadershipChange]:
        elector = Elector(config("a"), backend=backend)
        seen: list[LeadershipChange] = []
        got_three = asyncio.Event()

        async def follow() -> None:
            async for change in elector.changes():
                seen.append(change)
                if len(seen) == 3:
                    got_three.set()
                    return

        @elector.guard
        async def refresh() -> str:
            return "ran"

        follower = asyncio.create_task(follow())
        await asyncio.sleep(0)  # subscribed before the start
        assert await refresh() is None
        async with elector:
            await asyncio.wait_for(asyncio.to_thread(elector.wait_until_leader, 10), 15)
            assert await refresh() == "ran"
        await asyncio.wait_for(got_three.wait(), 10)
        await follower
        return seen

    seen = asyncio.run(scenario())
    assert seen[0] == LeadershipChange(False)
    assert seen[1].leader and seen[1].fencing_token and seen[1].reason is None
    assert seen[2] == LeadershipChange(False, None, StepDownReason.SHUTDOWN)


def test_the_apscheduler_example_runs_jobs_on_the_leader_only_and_hands_over(
        etcd: EtcdCluster, name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("apscheduler", minversion="3.10")
    monkeypatch.syspath_prepend(str(EXAMPLE))
    sys.modules.pop("gated_scheduler", None)
    from gated_scheduler import gated_scheduler  # type: ignore[import-not-found]

    runs: list[tuple[str, int, float]] = []
    lock = threading.Lock()

    def replica(rid: str) -> tuple[Elector, object]:
        elector = Elector(config(rid, etcd.endpoints, name))

        def job() -> None:
            # Read before the check: a run that passed it started before its term ended, so before the next began.
            started = time.monotonic()
            token = elector.check()
            with lock:
                runs.append((rid, token, started))

        scheduler = gated_scheduler(elector, [(job, {"trigger": "interval", "seconds": 0.2, "id": "job"})])
        return elector, scheduler

    (a, sched_a), (b, sched_b) = replica("a"), replica("b")
    try:
        a.start()
        assert a.wait_until_leader(20)
        b.start()
        wait_for(lambda: len(runs) >= 3, 10, "the leader's scheduler runs its job")
        assert not b.is_leader and {r[0] for r in runs} == {"a"}
        a.stop()  # graceful handover: a's scheduler is paused on its step-down, b's resumed on its election
        assert b.wait_until_leader(20)
        wait_for(lambda: sum(r[0] == "b" for r in runs) >= 3, 10, "the new leader's scheduler runs the job")
    finally:
        a.stop()
        b.stop()
        sched_a.shutdown(wait=True)  # type: ignore[attr-defined]
        sched_b.shutdown(wait=True)  # type: ignore[attr-defined]
    by_a = [r for r in runs if r[0] == "a"]
    by_b = [r for r in runs if r[0] == "b"]
    assert len({r[1] for r in by_a}) == 1 and len({r[1] for r in by_b}) == 1
    assert by_b[0][1] > by_a[0][1]  # a new term, a greater fencing token
    assert max(r[2] for r in by_a) < min(r[2] for r in by_b)  # never both at once: a stopped before b began


def test_the_asyncio_example_resumes_its_scheduler_while_leading(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("apscheduler", minversion="3.10")
    from apscheduler.schedulers.asyncio import AsyncIOScheduler
    from apscheduler.schedulers.base import STATE_PAUSED

    monkeypatch.syspath_prepend(str(EXAMPLE))
    sys.modules.pop("gated_asyncio", None)
    from gated_asyncio import follow_leadership  # type: ignore[import-not-found]

    async def scenario() -> tuple[list[int], bool]:
        elector = Elector(config("a"), backend=MemoryBackend())
        runs: list[int] = []
        enough = asyncio.Event()

        @elector.guard
        async def refresh() -> None:
            runs.append(elector.check())
            if len(runs) >= 3:
                enough.set()

        scheduler = AsyncIOScheduler(timezone="UTC")
        scheduler.add_job(refresh, "interval", seconds=0.1, id="refresh")
        scheduler.start(paused=True)
        follower = asyncio.create_task(follow_leadership(elector, scheduler))
        try:
            async with elector:
                await asyncio.wait_for(enough.wait(), 10)
            # The step-down event reaches the follower through the loop, which pauses the scheduler.
            deadline = time.monotonic() + 10
            while scheduler.state != STATE_PAUSED and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            paused = scheduler.state == STATE_PAUSED
        finally:
            follower.cancel()
            scheduler.shutdown(wait=False)
        return runs, paused

    runs, paused = asyncio.run(scenario())
    assert len(runs) >= 3 and len(set(runs)) == 1 and paused
