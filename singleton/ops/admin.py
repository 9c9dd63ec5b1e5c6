"""The Admin gRPC service (proto/singleton/v1/admin.proto) of one replica."""
from __future__ import annotations

import ipaddress
import logging
import time
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc

from singleton.core.errors import ConfigError, SingletonError
from singleton.ops.control import check_job, run_verb
from singleton.ops.history import read_runs
from singleton.ops.http import probe_bind
from singleton.runtime.runner import Singleton
from singleton.v1 import admin_pb2, admin_pb2_grpc

log = logging.getLogger("singleton")


def to_proto(singleton: Singleton) -> admin_pb2.Status:
    st = singleton.status()
    return admin_pb2.Status(replica_id=st.replica_id, role=st.role, leader_id=st.leader_id,
                            fencing_token=st.fencing_token, lease_remaining_s=st.lease_remaining_s,
                            last_tick_slot=st.last_tick_slot, last_tick_unix_s=st.last_tick_unix_s,
                            counters=st.counters, last_step_down_reason=st.last_step_down_reason,
                            unix_s=time.time())


class AdminService(admin_pb2_grpc.AdminServicer):
    def __init__(self, singleton: Singleton, token: str | None) -> None:
        self._singleton, self._token = singleton, token

    def _authorize(self, context: grpc.ServicerContext) -> None:
        if self._token is None:
            return
        metadata = dict(context.invocation_metadata())
        if metadata.get("authorization") != f"Bearer {self._token}":
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong admin token")

    def GetStatus(self, request: Any, context: grpc.ServicerContext) -> admin_pb2.Status:  # noqa: N802
        self._authorize(context)
        return to_proto(self._singleton)

    def Resign(self, request: Any, context: grpc.ServicerContext) -> admin_pb2.ResignResponse:  # noqa: N802
        self._authorize(context)
        token = self._singleton.fencing_token or 0
        if not self._singleton.is_leader:
            return admin_pb2.ResignResponse(resigned=False, fencing_token=0)
        log.info("resign requested through the admin API")
        self._singleton.resign()
        return admin_pb2.ResignResponse(resigned=True, fencing_token=token)

    def WatchStatus(self, request: Any, context: grpc.ServicerContext) -> Iterator[admin_pb2.Status]:  # noqa: N802
        self._authorize(context)
        version = self._singleton.status_version
        yield to_proto(self._singleton)
        while context.is_active():
            new = self._singleton.wait_for_change(version, 1.0)
            if new != version:
                version = new
                yield to_proto(self._singleton)


    def ListRuns(self, request: Any, context: grpc.ServicerContext) -> admin_pb2.ListRunsResponse:  # noqa: N802
        self._authorize(context)
        limit = request.limit or 20
        if limit < 0:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "limit must be >= 0")
        try:
            record, runs = read_runs(self._singleton.backend, self._singleton.config, limit,
                                     job=request.job or None)
        except SingletonError as err:
            context.abort(grpc.StatusCode.UNAVAILABLE, f"cannot read the run record: {err}")
        return admin_pb2.ListRunsResponse(last_claim=record, runs=runs)

    # --- job control (ops.control): written to etcd, so it reaches whichever replica leads ----------------------
    def _control(self, verb: str, request: Any, context: grpc.ServicerContext) -> admin_pb2.ControlResponse:
        self._authorize(context)
        if request.for_s < 0:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "for_s must be >= 0")
        backend, config = self._singleton.backend, self._singleton.config
        try:
            check_job(backend, config, request.job or None, 3.0)
        except ConfigError as err:
            context.abort(grpc.StatusCode.NOT_FOUND, str(err))
        try:
            control, event, _ = run_verb(backend, config, verb, request.job or None,
                                         by=request.by or f"admin API {context.peer()}", reason=request.reason,
                                         for_s=request.for_s or None)
        except SingletonError as err:
            context.abort(grpc.StatusCode.UNAVAILABLE, f"cannot write the control record: {err}")
        log.info("%s of job %r through the admin API by %s", verb, request.job, event.by)
        return admin_pb2.ControlResponse(control=control, trigger_id=event.trigger_id)

    def PauseJob(self, request: Any, context: grpc.ServicerContext) -> admin_pb2.ControlResponse:  # noqa: N802
        return self._control("pause", request, context)

    def ResumeJob(self, request: Any, context: grpc.ServicerContext) -> admin_pb2.ControlResponse:  # noqa: N802
        return self._control("resume", request, context)

    def TriggerJob(self, request: Any, context: grpc.ServicerContext) -> admin_pb2.ControlResponse:  # noqa: N802
        return self._control("trigger", request, context)

    def SkipNext(self, request: Any, context: grpc.ServicerContext) -> admin_pb2.ControlResponse:  # noqa: N802
        return self._control("skip-next", request, context)


def parse_address(text: str) -> tuple[str, int]:
    """`PORT` (loopback) or `HOST:PORT`."""
    host, _, port = text.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    try:
        number = int(port)
    except ValueError:
        raise ConfigError(f"bad admin address {text!r}: expected [HOST:]PORT") from None
    if not 0 <= number <= 65535:
        raise ConfigError(f"bad admin address {text!r}: port out of range")
    return host, number


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_admin_exposure(host: str, token: str | None) -> None:
    """The admin API can make the leader resign: beyond loopback it needs a token."""
    if not is_loopback(host) and not token:
        raise ConfigError(f"admin address {host} is not loopback: give --admin-token-file (or bind 127.0.0.1)")


def serve_admin(singleton: Singleton, address: str, token: str | None = None) -> tuple[grpc.Server, int]:
    host, port = parse_address(address)
    check_admin_exposure(host, token)
    # gRPC sets SO_REUSEPORT by default: a second replica on the same port would bind too, and the kernel
    # would split calls (Resign!) between the two. Off, the second one fails here instead.
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8, thread_name_prefix="singleton-admin"),
                         options=[("grpc.so_reuseport", 0)])
    admin_pb2_grpc.add_AdminServicer_to_server(AdminService(singleton, token), server)
    try:
        bound = server.add_insecure_port(f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
    except RuntimeError:  # grpcio >= 1.5x raises instead of returning 0
        bound = 0
    if bound == 0:
        why = probe_bind(host, port)
        remedy = "give this replica another" if why == "address already in use" else "check"
        raise ConfigError(f"cannot serve the admin API on {host}:{port}: {why}; {remedy} --admin-address")
    server.start()
    log.info("admin API on %s:%d", host, bound)
    return server, bound
