"""With OTEL_EXPORTER_OTLP_ENDPOINT set, `singleton run` exports metrics and spans over OTLP.

The collector here is a real OTLP/gRPC server built from the opentelemetry-proto service definitions,
listening on loopback; it records what arrives.
"""
from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from concurrent import futures
from pathlib import Path

import grpc
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from singleton.dev.embedded import EtcdCluster, free_port
from singleton.dev.ledger import LEDGER_ENV


class Collector(metrics_service_pb2_grpc.MetricsServiceServicer, trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self) -> None:
        self.metric_names: set[str] = set()
        self.span_names: set[str] = set()
        self.lock = threading.Lock()

    def Export(self, request, context):  # type: ignore[no-untyped-def]  # noqa: N802
        with self.lock:
            if isinstance(request, metrics_service_pb2.ExportMetricsServiceRequest):
                for rm in request.resource_metrics:
                    for sm in rm.scope_metrics:
                        self.metric_names.update(m.name for m in sm.metrics)
                return metrics_service_pb2.ExportMetricsServiceResponse()
            for rs in request.resource_spans:
                for ss in rs.scope_spans:
                    self.span_names.update(s.name for s in ss.spans)
            return trace_service_pb2.ExportTraceServiceResponse()


def test_metrics_and_spans_reach_an_otlp_collector(etcd: EtcdCluster, tmp_path: Path, name: str) -> None:
    collector = Collector()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(collector, server)
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(collector, server)
    port = server.add_insecure_port(f"127.0.0.1:{free_port()}")
    server.start()
    env = {**os.environ, "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}",
           "OTEL_EXPORTER_OTLP_INSECURE": "true", "OTEL_METRIC_EXPORT_INTERVAL": "1000",
           "OTEL_BSP_SCHEDULE_DELAY": "500", LEDGER_ENV: str(tmp_path / "ledger.jsonl")}
    proc = subprocess.Popen([sys.executable, "-m", "singleton", "run", "--endpoints", etcd.endpoints_arg, "--name",
                             name, "--job", "singleton.dev.ledger:record_tick", "--http-port", "0"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 20
        wanted = {"singleton.is_leader", "singleton.ticks", "singleton.tick_lateness", "singleton.elections_won"}
        while time.monotonic() < deadline:
            with collector.lock:
                if wanted <= collector.metric_names and {"singleton.tick", "singleton.campaign"} <= collector.span_names:
                    break
            time.sleep(0.2)
        with collector.lock:
            assert wanted <= collector.metric_names, collector.metric_names
            assert {"singleton.tick", "singleton.campaign"} <= collector.span_names, collector.span_names
    finally:
        proc.terminate()
        proc.wait(15)
        server.stop(1)
