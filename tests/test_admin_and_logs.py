"""The admin API's exposure rules and token, and the JSON log format."""
from __future__ import annotations

import json
import logging

import grpc
import pytest

from singleton import Config, ConfigError, MemoryBackend, Singleton
from singleton.ops.admin import check_admin_exposure, parse_address, serve_admin
from singleton.ops.logs import JsonFormatter, setup_logging
from singleton.core.timings import FAST
from singleton.testing.recorder import wait_for
from singleton.v1 import admin_pb2, admin_pb2_grpc


def test_admin_beyond_loopback_needs_a_token() -> None:
    assert parse_address("7070") == ("127.0.0.1", 7070)
    check_admin_exposure("127.0.0.1", None)
    check_admin_exposure("::1", None)
    with pytest.raises(ConfigError, match="not loopback"):
        check_admin_exposure("0.0.0.0", None)
    check_admin_exposure("0.0.0.0", "secret")
    with pytest.raises(ConfigError):
        parse_address("host:port")


def test_admin_token_is_enforced_and_status_is_served() -> None:
    app = Singleton(Config(endpoints="127.0.0.1:2379", name="adm", replica_id="a",  # type: ignore[arg-type]
                           **FAST.config_kwargs()),
                    lambda ctx: None, backend=MemoryBackend())
    server, port = serve_admin(app, "127.0.0.1:0", token="s3cret")
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    stub = admin_pb2_grpc.AdminStub(channel)
    try:
        with app:
            wait_for(lambda: app.is_leader, 5, "leadership")
            with pytest.raises(grpc.RpcError) as refused:
                stub.GetStatus(admin_pb2.GetStatusRequest(), timeout=3)
            assert refused.value.code() is grpc.StatusCode.UNAUTHENTICATED
            status = stub.GetStatus(admin_pb2.GetStatusRequest(), timeout=3,
                                    metadata=[("authorization", "Bearer s3cret")])
            assert status.role == "leader" and status.leader_id == "a" and status.fencing_token > 0
            assert status.counters["elections_won"] == 1
    finally:
        channel.close()
        server.stop(0)


def test_json_log_lines_carry_the_replica_id() -> None:
    record = logging.LogRecord("singleton", logging.WARNING, __file__, 1, "stepping down (%s)", ("lease_expiring",),
                               None)
    line = json.loads(JsonFormatter("pod-1").format(record))
    assert line["replica_id"] == "pod-1" and line["msg"] == "stepping down (lease_expiring)"
    assert line["level"] == "warning" and line["ts"].endswith("Z")
    with pytest.raises(ConfigError):
        setup_logging("INFO", "xml", "pod-1")
    with pytest.raises(ConfigError):
        setup_logging("LOUD", "json", "pod-1")


def test_list_runs_serves_the_run_record_history_newest_first() -> None:
    backend = MemoryBackend()
    slots: list[int] = []
    app = Singleton(Config(endpoints="127.0.0.1:2379", name="runs", replica_id="a",  # type: ignore[arg-type]
                           **FAST.config_kwargs()), lambda ctx: slots.append(ctx.slot), backend=backend)
    server, port = serve_admin(app, "127.0.0.1:0", token="s3cret")
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    stub = admin_pb2_grpc.AdminStub(channel)
    auth = (("authorization", "Bearer s3cret"),)
    try:
        with app:
            wait_for(lambda: len(slots) >= 4, 10, "four runs")
            response = stub.ListRuns(admin_pb2.ListRunsRequest(limit=2), timeout=3, metadata=auth)
            assert len(response.runs) == 2 and response.runs[0].seq > response.runs[1].seq
            assert all(r.outcome == "ok" and r.replica_id == "a" and r.slot in slots for r in response.runs)
            assert response.last_claim.slot >= response.runs[0].slot and response.last_claim.replica_id == "a"
            with pytest.raises(grpc.RpcError) as refused:
                stub.ListRuns(admin_pb2.ListRunsRequest(), timeout=3)
            assert refused.value.code() is grpc.StatusCode.UNAUTHENTICATED
    finally:
        channel.close()
        server.stop(0)
