"""What an idle replica loads, as properties rather than timings: the modules it never needs are not imported
(each costs memory for the replica's whole life), and nothing that wakes on a timer is installed when nothing
reads its output."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def modules_after(code: str, **env: str) -> set[str]:
    """sys.modules after running `code` in a fresh interpreter on this checkout (no OTEL_* from our environment)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    clean["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), clean.get("PYTHONPATH")]))
    out = subprocess.run([sys.executable, "-c", f"{code}\nimport json, sys; print(json.dumps(sorted(sys.modules)))"],
                         capture_output=True, text=True, timeout=60, env={**clean, **env}, check=True).stdout
    return set(json.loads(out.splitlines()[-1]))


RUN_WITHOUT_READERS = """
import singleton.ops.cli, singleton.runtime.runner, singleton.backends.etcd
from singleton.ops.http import setup_telemetry
assert setup_telemetry("r1", prometheus=False) is False
"""


def test_a_replica_without_metrics_readers_loads_no_telemetry_sdk() -> None:
    """`singleton run --http-port 0` without OTLP: nobody reads metrics, so no SDK (no PeriodicExportingMetricReader
    or any reader thread), no Prometheus client, no psutil (the SDK's resources import it), no http.server."""
    loaded = modules_after(RUN_WITHOUT_READERS)
    for module in ("opentelemetry.sdk", "opentelemetry.sdk.metrics.export", "prometheus_client", "psutil",
                   "http.server", "opentelemetry.exporter.otlp"):
        assert module not in loaded


def test_a_replica_serving_metrics_starts_no_export_thread() -> None:
    """/metrics is read on scrape (the Prometheus reader has no thread); without OTLP no periodic reader (whose
    thread wakes every export interval) is made."""
    loaded = modules_after("import threading\n"
                           "from singleton.ops.http import setup_telemetry\n"
                           "before = {t.name for t in threading.enumerate()}\n"
                           "assert setup_telemetry('r1', prometheus=True) is True\n"
                           "assert {t.name for t in threading.enumerate()} == before, threading.enumerate()\n")
    assert "prometheus_client" in loaded and "opentelemetry.exporter.otlp" not in loaded


def test_import_singleton_does_not_import_croniter() -> None:
    """croniter (and dateutil under it) is imported when a cron schedule is parsed, not by every replica."""
    loaded = modules_after("import singleton, singleton.ops.cli, singleton.core.schedule")
    assert "croniter" not in loaded and "dateutil" not in loaded
    assert "croniter" in modules_after("from singleton.core.schedule import parse_cron\nparse_cron('* * * * * *')")


def _select_timeout(thread_id: int) -> object:
    """The timeout of the selector.select() the thread is in now ("not in select" when it is elsewhere)."""
    frame = sys._current_frames().get(thread_id)
    while frame is not None:
        if frame.f_code.co_name == "select" and "timeout" in frame.f_locals:
            return frame.f_locals["timeout"]
        frame = frame.f_back
    return "not in select"


def test_the_http_server_thread_waits_without_a_timeout_and_still_closes() -> None:
    """Between requests the /metrics server sleeps in select() with no timeout (serve_forever's default polls
    every 0.5 s), and close() still ends it."""
    import urllib.request

    from singleton.ops.http import HttpServer
    from singleton.testing.recorder import wait_for

    server = HttpServer("127.0.0.1", 0, lambda: [], lambda: []).start()
    thread = server._thread
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/healthz", timeout=5) as response:
            assert response.status == 200
        assert thread.ident is not None
        wait_for(lambda: _select_timeout(thread.ident) != "not in select", 5, "the server to wait for requests")
        assert _select_timeout(thread.ident) is None
    finally:
        server.close()
    thread.join(5)
    assert not thread.is_alive()
