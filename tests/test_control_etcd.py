"""Job control on real etcd, each verb with a leader change in the middle: two in-process replicas of one name, the
verb from the CLI, then the leader stops gracefully and the other one takes over (runtime.control, ops.control)."""
from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest

from singleton import Config, Singleton, TickContext
from singleton.backends.etcd import EtcdBackend
from singleton.core.records import decode_run
from singleton.core.timings import FAST
from singleton.dev.embedded import EtcdCluster
from singleton.ops.cli import main
from singleton.testing.recorder import wait_for

Runs = list[tuple[str, int]]  # (replica, ctx.slot); a manual run's slot is negative


def replica(etcd: EtcdCluster, name: str, rid: str, runs: Runs, job: Callable[[TickContext], None] | None = None,
            every: float = 0.25) -> Singleton:
    app = Singleton(Config(endpoints=etcd.endpoints, name=name, replica_id=rid, **FAST.config_kwargs()))

    @app.job(name="tick", every=every)
    def tick(ctx: TickContext) -> None:
        runs.append((rid, ctx.slot))
        if job is not None:
            job(ctx)

    return app


@contextmanager
def pair(etcd: EtcdCluster, name: str, runs: Runs, **kw: object) -> Iterator[tuple[Singleton, Singleton]]:
    """`a` leads (it starts first), `b` stands by."""
    a, b = replica(etcd, name, "a", runs, **kw), replica(etcd, name, "b", runs, **kw)  # type: ignore[arg-type]
    a.start()
    try:
        wait_for(lambda: a.is_leader, 10, "a leads")
        b.start()
        try:
            yield a, b
        finally:
            b.stop()
    finally:
        a.stop()


def cli(etcd: EtcdCluster, name: str, *args: str) -> list[str]:
    return ["--endpoints", ",".join(map(str, etcd.endpoints)), "--name", name, *args]


def record_slot(etcd: EtcdCluster, name: str) -> int:
    backend = EtcdBackend(etcd.endpoints)
    try:
        kv, _ = backend.get(f"/singleton/{name}/jobs/tick/run", 3.0)
        record = decode_run(kv.value) if kv is not None else None
        return record.slot if record is not None else 0
    finally:
        backend.close()


def history(etcd: EtcdCluster, name: str, capsys: pytest.CaptureFixture[str]) -> dict:
    capsys.readouterr()
    assert main(["history", *cli(etcd, name, "--job", "tick", "--json", "--limit", "100")]) == 0
    return json.loads(capsys.readouterr().out)  # type: ignore[no-any-return]


def test_pause_holds_across_a_leader_change_and_resume_runs_again(etcd: EtcdCluster, name: str,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    runs: Runs = []
    with pair(etcd, name, runs) as (a, b):
        wait_for(lambda: len(runs) >= 2, 10, "two runs")
        assert main(["pause", *cli(etcd, name, "--job", "tick", "--reason", "freeze", "--for", "1h",
                                   "--by", "ops@test")]) == 0
        # Acknowledged: every claim made after the pause's revision is refused, so the record stands still.
        last = record_slot(etcd, name)
        a.stop()  # the leader changes while paused
        wait_for(lambda: b.is_leader and b.stats.job_missed["tick", "paused"] >= 3, 15,
                 "b leads and passes three paused slots")
        assert all(slot <= last for _, slot in runs), (last, runs)
        assert record_slot(etcd, name) == last and not any(r == "b" for r, _ in runs)
        capsys.readouterr()
        assert main(["status", *cli(etcd, name, "--json")]) == 0
        control = json.loads(capsys.readouterr().out)["control"]
        assert [(c["job"], c["paused"], c["reason"], c["by"]) for c in control] == [("tick", True, "freeze", "ops@test")]
        assert control[0]["until_unix_s"] - control[0]["at_unix_s"] == pytest.approx(3600)
        assert main(["status", *cli(etcd, name)]) == 0
        assert "PAUSED by ops@test" in capsys.readouterr().out
        assert main(["resume", *cli(etcd, name, "--job", "tick", "--reason", "thaw", "--by", "ops@test")]) == 0
        wait_for(lambda: sum(r == "b" for r, _ in runs) >= 2, 10, "b runs again after the resume")
    events = history(etcd, name, capsys)["control_events"]
    assert [(e["kind"], e["by"], e["reason"]) for e in events] == [("resume", "ops@test", "thaw"),
                                                                   ("pause", "ops@test", "freeze")]


def test_trigger_runs_once_across_a_leader_change_and_is_refused_while_the_job_runs(
        etcd: EtcdCluster, name: str, capsys: pytest.CaptureFixture[str]) -> None:
    runs: Runs = []
    release = threading.Event()

    def job(ctx: TickContext) -> None:
        if ctx.slot < 0 and len(runs) >= 2:
            release.wait(10)  # the second manual run holds the job busy

    with pair(etcd, name, runs, job=job, every=3600) as (a, b):  # no scheduled run in this test's time
        assert main(["trigger", *cli(etcd, name, "--job", "tick", "--wait", "0", "--by", "ops@test")]) == 0
        a.stop()  # the leader stops as the trigger arrives: it runs the trigger before it hands over, or b does
        wait_for(lambda: b.is_leader and len(runs) >= 1, 10, "the manual run")
        capsys.readouterr()
        # b leads now: a second trigger runs on b and keeps the job busy; a third is refused meanwhile (overlap skip).
        assert main(["trigger", *cli(etcd, name, "--job", "tick", "--reason", "again")]) == 0
        assert "claimed as run" in capsys.readouterr().out
        wait_for(lambda: len(runs) >= 2, 10, "the second manual run starts")
        assert main(["trigger", *cli(etcd, name, "--job", "tick", "--reason", "third")]) == 1
        assert "refused: the job is running" in capsys.readouterr().out
        release.set()
        wait_for(lambda: b.stats.job_ticks["tick", "ok"] >= 1 + (a.stats.job_ticks["tick", "ok"] == 0), 10,
                 "the manual runs finish")
    assert len(runs) == 2 and all(slot < 0 for _, slot in runs) and runs[1][0] == "b"
    result = history(etcd, name, capsys)
    manual = [r for r in result["runs"] if r.get("trigger_id")]
    assert len(manual) == 2 and [r["triggered_by"] for r in manual][1] == "ops@test"
    kinds = [e["kind"] for e in reversed(result["control_events"])]
    assert kinds.count("triggered") == 2 and kinds.count("trigger-refused") == 1 and kinds.count("trigger") == 3


def test_skip_next_across_a_handover_skips_exactly_one_slot(etcd: EtcdCluster, name: str,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    runs: Runs = []
    with pair(etcd, name, runs) as (a, b):
        wait_for(lambda: len(runs) >= 2, 10, "two runs")
        assert main(["skip-next", *cli(etcd, name, "--job", "tick", "--reason", "bad data", "--by", "ops@test")]) == 0
        a.stop()  # hands over at once: the skip is consumed by a's claim or by b's, never by both
        wait_for(lambda: b.is_leader and sum(r == "b" for r, _ in runs) >= 3, 10, "b runs")
        skipped = a.stats.job_missed["tick", "skip_next"] + b.stats.job_missed["tick", "skip_next"]
    result = history(etcd, name, capsys)
    events = [e for e in result["control_events"] if e["kind"] == "skipped"]
    assert len(events) == 1 and events[0]["by"] == "ops@test" and events[0]["reason"] == "bad data"
    assert events[0]["slot"] not in {slot for _, slot in runs}
    assert skipped <= 1 and [r["outcome"] for r in result["runs"] if r["slot"] == events[0]["slot"]] in ([], ["skip_next"])


def test_control_verbs_give_one_line_errors(etcd: EtcdCluster, name: str, capsys: pytest.CaptureFixture[str]) -> None:
    runs: Runs = []
    app = replica(etcd, name, "a", runs)
    with app:
        wait_for(lambda: len(runs) >= 1, 10, "a run")
        capsys.readouterr()
        assert main(["pause", *cli(etcd, name, "--job", "tick", "--for", "2x")]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "bad duration '2x'" in err
        assert main(["pause", *cli(etcd, name, "--job", "tikc")]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "unknown job 'tikc'" in err and "tick" in err
        assert main(["skip-next", *cli(etcd, name + "-typo")]) == 2
        assert "nothing under" in capsys.readouterr().err


def test_admin_api_pauses_resumes_and_triggers(etcd: EtcdCluster, name: str,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    import grpc

    from singleton.dev.embedded import free_port
    from singleton.ops.admin import serve_admin
    from singleton.v1 import admin_pb2, admin_pb2_grpc

    runs: Runs = []
    app = replica(etcd, name, "a", runs)
    port = free_port()
    server, _ = serve_admin(app, str(port), None)
    try:
        with app, grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = admin_pb2_grpc.AdminStub(channel)
            wait_for(lambda: len(runs) >= 1, 10, "a run")
            paused = stub.PauseJob(admin_pb2.ControlRequest(job="tick", reason="maintenance", for_s=600), timeout=5)
            assert paused.control.paused and paused.control.until_unix_s - paused.control.at_unix_s == 600
            last = record_slot(etcd, name)
            wait_for(lambda: app.stats.job_missed["tick", "paused"] >= 2, 10, "two paused slots")
            assert max(slot for _, slot in runs) <= last
            triggered = stub.TriggerJob(admin_pb2.ControlRequest(job="tick", by="api-user"), timeout=5)
            wait_for(lambda: any(slot < 0 for _, slot in runs), 10, "the manual run (a pause stops only the schedule)")
            assert not stub.ResumeJob(admin_pb2.ControlRequest(job="tick"), timeout=5).control.paused
            wait_for(lambda: max(slot for _, slot in runs) > last, 10, "scheduled runs again")
            with pytest.raises(grpc.RpcError) as err:
                stub.SkipNext(admin_pb2.ControlRequest(job="nope"), timeout=5)
            assert err.value.code() is grpc.StatusCode.NOT_FOUND and "unknown job 'nope'" in (err.value.details() or "")
    finally:
        server.stop(1.0)
    events = history(etcd, name, capsys)["control_events"]
    assert [e["kind"] for e in reversed(events)] == ["pause", "trigger", "triggered", "resume"]
    assert events[-1]["by"].startswith("admin API") and events[-2]["trigger_id"] == triggered.trigger_id


def test_the_single_job_of_run_job_is_controlled_without_job(etcd: EtcdCluster, name: str,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    """The unnamed job of `run --job` (legacy keys): `<prefix>/<name>/control`, its events beside its history."""
    slots: list[int] = []
    app = Singleton(Config(endpoints=etcd.endpoints, name=name, replica_id="a", **FAST.config_kwargs()),
                    lambda ctx: slots.append(ctx.slot))
    with app:
        wait_for(lambda: len(slots) >= 1, 10, "a run")
        assert main(["pause", *cli(etcd, name, "--reason", "legacy")]) == 0
        wait_for(lambda: app.stats.missed_slots["paused"] >= 1, 10, "a paused slot")
        count = len(slots)
        assert main(["trigger", *cli(etcd, name)]) == 0
        wait_for(lambda: len(slots) > count, 10, "the manual run")
        assert slots[-1] < 0

        def shown() -> str:
            capsys.readouterr()
            assert main(["history", *cli(etcd, name)]) == 0
            return capsys.readouterr().out

        # A paused job claims nothing: the manual run's outcome is written by itself, within a pass of the loop.
        wait_for(lambda: "(manual: trigger" in shown(), 10, "the manual run in the history while paused")
        out = shown()
        assert "control events:" in out and "'legacy'" in out
