"""etcd down for minutes: a short first line, then at most one summary per 30 s, then one line when it is back;
the retry cadence itself stays bounded by campaign_backoff_max_s. /readyz before any answer says so plainly."""
from __future__ import annotations

import logging

import pytest

from singleton import Config, MemoryBackend, Singleton
from singleton.core.errors import BackendTimeout, BackendUnavailable, TlsError
from singleton.core.repeats import RepeatedFailures, brief
from singleton.core.timings import FAST
from singleton.runtime.campaign import Campaigner

REFUSED = BackendUnavailable("grant lease (tried 1 endpoint(s)): unavailable: failed to connect to all addresses; "
                             "last error: UNKNOWN: ipv4:127.0.0.1:1: Failed to connect to remote host: "
                             "Connection refused")


def test_brief_names_the_call_and_the_cause() -> None:
    assert brief(REFUSED) == "grant lease: Connection refused"
    assert brief(BackendUnavailable("watch /k via http://127.0.0.1:5: unavailable: Socket closed")) == \
        "watch /k via http://127.0.0.1:5: Socket closed"
    assert brief(BackendTimeout("campaign (tried 3 endpoint(s)): deadline_exceeded: Deadline Exceeded")) == \
        "campaign: timed out"
    assert brief(TlsError("the etcd server's certificate is not signed by --cacert; grant lease: ...")) == \
        "the etcd server's certificate is not signed by --cacert"


def test_a_long_outage_logs_the_first_failure_then_a_line_per_30_s_then_the_recovery(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="t")
    now = [0.0]
    repeats = RepeatedFailures(logging.getLogger("t"), "etcd not usable at http://127.0.0.1:1", clock=lambda: now[0])
    for _ in range(60):  # two minutes, a try every 2 s
        repeats.failed(REFUSED, 2.0)
        now[0] += 2.0
    repeats.recovered()
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0] == "etcd not usable at http://127.0.0.1:1 (grant lease: Connection refused); retrying in 2.0 s"
    summaries = lines[1:-1]
    assert len(summaries) == 3  # at 30, 60, 90 s
    assert summaries[0].startswith("etcd not usable at http://127.0.0.1:1: still failing, 15 tries in the last 30 s")
    assert "last: grant lease: Connection refused" in summaries[0]
    assert lines[-1] == "etcd not usable at http://127.0.0.1:1: fine again after 60 failed tries over 120.0 s"
    assert all(len(line) < 200 for line in lines)
    assert [r.levelname for r in caplog.records] == ["WARNING"] * 4 + ["INFO"]


def test_a_failure_long_after_the_last_starts_a_new_run(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="t")
    now = [0.0]
    repeats = RepeatedFailures(logging.getLogger("t"), "watch on /k broke", clock=lambda: now[0])
    repeats.failed(REFUSED)
    now[0] += 300.0
    repeats.failed(REFUSED)
    assert [r.getMessage() for r in caplog.records] == ["watch on /k broke (grant lease: Connection refused)"] * 2


def test_the_retry_wait_stays_bounded_by_campaign_backoff_max() -> None:
    config = Config(endpoints="127.0.0.1:1", name="n", replica_id="a",  # type: ignore[arg-type]
                    **FAST.config_kwargs())
    app = Singleton(config, lambda _ctx: None, backend=MemoryBackend())
    retrying = app._campaigner.retrying()
    assert isinstance(app._campaigner, Campaigner)
    state = type("State", (), {"attempt_number": 50})()
    waits = [retrying.wait(state) for _ in range(20)]  # type: ignore[arg-type]
    assert max(waits) <= config.campaign_backoff_max_s + 0.2  # + jitter


def test_readyz_before_any_answer_from_etcd_says_so() -> None:
    config = Config(endpoints="127.0.0.1:1", name="n", replica_id="a",  # type: ignore[arg-type]
                    **FAST.config_kwargs())
    backend = MemoryBackend()
    backend.last_ok_at = float("-inf")
    app = Singleton(config, lambda _ctx: None, backend=backend)
    assert "no answer from etcd yet" in app.readiness()
