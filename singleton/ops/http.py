"""Wiring for `singleton run`: an OpenTelemetry SDK with a Prometheus reader (and OTLP when the standard
OTEL_EXPORTER_OTLP_* variables are set), and one small HTTP server for /metrics, /healthz and /readyz."""
from __future__ import annotations

import errno
import json
import logging
import os
import socket
import threading
from collections.abc import Callable
from typing import Any

log = logging.getLogger("singleton")

# The SDK's default buckets are for milliseconds-as-numbers; ours are seconds.
FAST_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
JOB_BUCKETS_S = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
TAKEOVER_BUCKETS_S = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 15.0, 30.0, 60.0)
HISTOGRAM_BUCKETS = {
    "singleton.tick_lateness": FAST_BUCKETS_S,
    "singleton.renewal_latency": FAST_BUCKETS_S,
    "singleton.job_duration": JOB_BUCKETS_S,
    "singleton.takeover_time": TAKEOVER_BUCKETS_S,
}


def views() -> list[Any]:
    """Views giving our histograms second-scale buckets; add them to your own MeterProvider too."""
    from opentelemetry.sdk.metrics.view import ExplicitBucketHistogramAggregation, View

    return [View(instrument_name=name, aggregation=ExplicitBucketHistogramAggregation(list(bounds)))
            for name, bounds in HISTOGRAM_BUCKETS.items()]


def otlp_configured() -> bool:
    return any(os.environ.get(v) for v in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
                                           "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))


def setup_telemetry(service_instance_id: str, *, scope_labels: bool = False, prometheus: bool = True) -> bool:
    """Install the global MeterProvider (Prometheus reader when /metrics is served, plus OTLP if configured)
    and, with OTLP, a TracerProvider. Without OTLP, spans stay no-ops. `scope_labels` puts the otel_scope_*
    labels (always `singleton`) back on every /metrics series. With neither Prometheus nor OTLP, nothing reads
    the metrics: no SDK is installed (nor imported: ~5 MB of an idle replica's memory), the instruments stay
    the API's no-ops, and False is returned."""
    if not prometheus and not otlp_configured():
        return False
    from opentelemetry import metrics, trace
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.resources import Resource

    resource = Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME", "singleton"),
                                "service.instance.id": service_instance_id})
    readers: list[Any] = []
    if prometheus:
        from opentelemetry.exporter.prometheus import PrometheusMetricReader

        readers.append(PrometheusMetricReader(scope_info_enabled=scope_labels))
    if otlp_configured():
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        readers.append(PeriodicExportingMetricReader(OTLPMetricExporter()))
        tracer_provider = TracerProvider(resource=resource)
        tracer_provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        trace.set_tracer_provider(tracer_provider)
        log.info("OTLP export on (%s)", os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "per-signal endpoints"))
    metrics.set_meter_provider(MeterProvider(metric_readers=readers, resource=resource, views=views()))
    return True


Check = Callable[[], list[str]]


def bind_failure(err: OSError) -> str:
    """`address already in use`, not `[Errno 98] Address already in use`: a clause for a one-line error."""
    if err.errno == errno.EADDRINUSE:
        return "address already in use"
    return (err.strerror or str(err)).lower()


def probe_bind(host: str, port: int) -> str:
    """Why (host, port) cannot be bound, found by trying: for servers (gRPC) that do not say why."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((host, port))
        except OSError as err:
            return bind_failure(err)
    return "the server could not bind it"


class HttpServer:
    """GET /metrics (Prometheus text), /healthz (liveness), /readyz (readiness); 503 with reasons when not ok."""

    def __init__(self, host: str, port: int, healthz: Check, readyz: Check) -> None:
        # Here, not at the top: a replica with --http-port 0 never loads http.server (and email under it, ~2 MB).
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        checks = {"/healthz": healthz, "/readyz": readyz}

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the http.server API
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

                    self._send(200, generate_latest(REGISTRY), CONTENT_TYPE_LATEST)
                elif path in checks:
                    problems = checks[path]()
                    body = json.dumps({"ok": not problems, "problems": problems}).encode()
                    self._send(503 if problems else 200, body, "application/json")
                else:
                    self._send(404, b'{"error": "not found"}', "application/json")

            def _send(self, code: int, body: bytes, content_type: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:  # probes every few seconds: keep the log quiet
                pass

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        # No poll interval: between requests the thread sleeps in select() with no timeout (serve_forever's default
        # wakes it twice a second to look for a shutdown); close() wakes it with a connection of its own.
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": None},
                                        daemon=True, name="singleton-http")

    def start(self) -> HttpServer:
        self._thread.start()
        return self

    def close(self) -> None:
        if self._thread.is_alive():
            stopping = threading.Thread(target=self._server.shutdown, daemon=True, name="singleton-http-stop")
            stopping.start()
            address = (str(self._server.server_address[0]), int(self._server.server_address[1]))
            while stopping.is_alive():  # until serve_forever has seen the shutdown flag: only while closing
                try:
                    socket.create_connection(address, timeout=1.0).close()
                except OSError:
                    pass
                stopping.join(0.05)
        self._server.server_close()
