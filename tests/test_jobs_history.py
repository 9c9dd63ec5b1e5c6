"""`singleton history --job` / `status --job` and the admin API's ListRuns read one named job's runs from etcd,
after a real replica ran several jobs (etcd, not the memory backend: the keys and transactions are etcd's)."""
from __future__ import annotations

import json

import grpc
import pytest

from singleton import Config, Singleton, TickContext
from singleton.core.timings import FAST
from singleton.dev.embedded import EtcdCluster, free_port
from singleton.ops.admin import serve_admin
from singleton.ops.cli import main
from singleton.testing.recorder import wait_for
from singleton.v1 import admin_pb2, admin_pb2_grpc


def test_history_status_and_list_runs_of_one_named_job(etcd: EtcdCluster, name: str,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    runs: dict[str, list[int]] = {"quick": [], "second": []}
    app = Singleton(Config(endpoints=etcd.endpoints, name=name, replica_id="j1", **FAST.config_kwargs()))

    @app.job(name="quick", every=0.5)
    def quick(ctx: TickContext) -> None:
        runs["quick"].append(ctx.slot)

    @app.job(name="second", every=1)
    def second(ctx: TickContext) -> None:
        runs["second"].append(ctx.slot)

    port = free_port()
    server, _ = serve_admin(app, str(port), None)
    endpoints = ",".join(map(str, etcd.endpoints))
    try:
        with app:
            wait_for(lambda: len(runs["second"]) >= 3, 10, "three runs of the every-second job")
            with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
                listed = admin_pb2_grpc.AdminStub(channel).ListRuns(admin_pb2.ListRunsRequest(job="quick"), timeout=5)
            assert listed.last_claim.slot >= runs["quick"][1] and {r.slot for r in listed.runs} <= set(runs["quick"])
            assert main(["status", "--endpoints", endpoints, "--name", name, "--job", "second", "--json"]) == 0
            status = json.loads(capsys.readouterr().out)["runs"]
            assert status["last_claimed_slot"] >= runs["second"][1] and status["next_slot"] is None
    finally:
        server.stop(1.0)
    assert main(["history", "--endpoints", endpoints, "--name", name, "--job", "quick", "--json"]) == 0
    history = json.loads(capsys.readouterr().out)
    assert history["job"] == "quick" and [r["slot"] for r in history["runs"]] == sorted(runs["quick"], reverse=True)
    assert main(["history", "--endpoints", endpoints, "--name", name]) == 0  # the legacy job's record: none here
    assert "no run recorded under" in capsys.readouterr().out
