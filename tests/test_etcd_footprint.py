"""What an idle replica costs etcd: one LeaseKeepAlive stream across renewals, and an idle watch that sends
nothing (no progress requests; a hung member is noticed by gRPC's HTTP/2 pings instead). Read from etcd's
own /metrics, never from the client's word."""
from __future__ import annotations

import re
import sys
import threading
import time
import traceback
import urllib.request

import pytest

from singleton import BackendTimeout
from singleton.backends.abc import WatchEvent
from singleton.backends.etcd import EtcdBackend
from singleton.core.config import parse_endpoint
from singleton.dev.embedded import EtcdCluster
from singleton.testing.proxy import CuttableProxy
from singleton.testing.recorder import wait_for


def etcd_counter(cluster: EtcdCluster, metric: str, method: str) -> float:
    with urllib.request.urlopen(f"http://{cluster.endpoints[0].target}/metrics", timeout=5) as response:
        text = response.read().decode()
    pattern = rf'^{metric}\{{[^}}]*grpc_method="{method}"[^}}]*\}} (\S+)$'
    return sum(float(v) for v in re.findall(pattern, text, re.M))


def test_renewals_share_one_keepalive_stream(etcd: EtcdCluster) -> None:
    backend = EtcdBackend(etcd.endpoints)
    try:
        lease = backend.grant_lease(10, 2.0)
        before = etcd_counter(etcd, "grpc_server_started_total", "LeaseKeepAlive")
        answers = [backend.keep_alive_once(lease.lease_id, 1.0) for _ in range(5)]
        after = etcd_counter(etcd, "grpc_server_started_total", "LeaseKeepAlive")
        assert answers == [10.0] * 5
        # One stream for five renewals (the former client opened one per renewal: 5).
        assert after - before == 1 and backend._keepalive.opened == 1
        backend.revoke_lease(lease.lease_id, 2.0)
        assert backend.keep_alive_once(lease.lease_id, 1.0) == 0  # a fresh stream answers for the revoked lease
        assert backend._keepalive.opened == 2
    finally:
        backend.close()


def test_a_renewal_that_timed_out_reopens_the_stream_and_renews(etcd: EtcdCluster) -> None:
    proxy = CuttableProxy("127.0.0.1", etcd.members[0].client_port)
    backend = EtcdBackend([parse_endpoint(proxy.endpoint)])
    try:
        lease = backend.grant_lease(10, 2.0)
        assert backend.keep_alive_once(lease.lease_id, 1.0) == 10
        proxy.cut()
        with pytest.raises(BackendTimeout):
            backend.keep_alive_once(lease.lease_id, 0.5)
        proxy.heal()
        # The late answer of the timed-out renewal must not be taken for this one's: a new stream, its own answer.
        assert backend.keep_alive_once(lease.lease_id, 5.0) == 10
        assert backend._keepalive.opened == 2
        backend.revoke_lease(lease.lease_id, 2.0)
    finally:
        backend.close()
        proxy.close()


def test_an_idle_watch_sends_nothing_and_still_delivers(etcd: EtcdCluster, name: str) -> None:
    key = f"/f/{name}/leader"
    # A check interval of 1 s: the former watch asked for a progress report after 1 s of silence.
    backend = EtcdBackend(etcd.endpoints, watch_check_interval_s=1.0, watch_check_timeout_s=1.0)
    stop, events = threading.Event(), []
    lease = backend.grant_lease(10, 2.0)
    won = backend.campaign(key, b"x", lease.lease_id, 2.0)

    def watch() -> None:
        events.extend(backend.watch(key, won.revision, stop))

    thread = threading.Thread(target=watch, daemon=True)
    try:
        thread.start()
        wait_for(lambda: events, 10, "the watch to deliver the campaign's put")
        # Our stream's own messages (the create request was counted before the put came back).
        before = etcd_counter(etcd, "grpc_server_msg_received_total", "Watch")
        time.sleep(2.5)
        idle_requests = etcd_counter(etcd, "grpc_server_msg_received_total", "Watch") - before
        assert time.monotonic() - backend.last_ok_at < 1.0  # an open, answered watch keeps readiness fresh
        backend.revoke_lease(lease.lease_id, 2.0)
        wait_for(lambda: len(events) == 2, 10, "the watch to deliver the delete")
        assert [e.deleted for e in events] == [False, True] and isinstance(events[1], WatchEvent)
        # None (the former watch sent a progress request after each second of silence: 2 in 2.5 s).
        assert idle_requests == 0, f"{idle_requests} watch requests while idle"
        started = time.monotonic()
        stop.set()
        thread.join(5)
        assert not thread.is_alive() and time.monotonic() - started < 2.0  # a stop cuts the stream at once
    finally:
        stop.set()
        backend.close()


def _polling_frames() -> list[str]:
    """Threads asleep in gRPC's sync-API waits, which wake on a timer: the stream iterator's 100 ms condition wait
    (grpc._common.wait) and the channel spin thread's 200 ms completion-queue poll."""
    found = []
    for frame in sys._current_frames().values():
        stack = traceback.extract_stack(frame)
        if any(f.filename.endswith(("grpc/_common.py", "grpc/_channel.py")) for f in stack):
            found.append(" <- ".join(f"{f.name} ({f.filename.rsplit('/', 1)[-1]})" for f in reversed(stack[-4:])))
    return found


def test_an_idle_watch_leaves_no_thread_polling_in_grpc(etcd: EtcdCluster, name: str) -> None:
    """The watch runs on grpc.aio: while it waits, no thread of ours sits in a sync-gRPC wait that wakes on a
    timer (on the blocking iterator, the reader woke 10 times a second and the channel spin thread 5)."""
    key = f"/f/{name}/leader"
    backend = EtcdBackend(etcd.endpoints)
    stop, events = threading.Event(), []
    lease = backend.grant_lease(10, 2.0)
    won = backend.campaign(key, b"x", lease.lease_id, 2.0)

    def watch() -> None:
        events.extend(backend.watch(key, won.revision, stop))

    thread = threading.Thread(target=watch, daemon=True)
    try:
        thread.start()
        wait_for(lambda: events, 10, "the watch to deliver the put")
        assert _polling_frames() == []
        assert [e.deleted for e in events] == [False]
        backend.revoke_lease(lease.lease_id, 2.0)
        wait_for(lambda: len(events) == 2, 10, "the watch to deliver the delete")
    finally:
        stop.set()
        thread.join(5)
        backend.close()
    assert not thread.is_alive()


def test_a_watch_on_a_hung_member_moves_to_the_next_and_misses_nothing(etcd: EtcdCluster, name: str) -> None:
    """The watch's channel pings its member (HTTP/2 keepalive, no timer of ours): a member that hangs breaks the
    stream, which restarts on the next endpoint from the last revision it delivered."""
    key = f"/f/{name}/leader"
    proxy = CuttableProxy("127.0.0.1", etcd.members[0].client_port)
    backend = EtcdBackend([parse_endpoint(proxy.endpoint), etcd.endpoints[0]], watch_check_timeout_s=1.0)
    writer = EtcdBackend(etcd.endpoints)
    stop, events = threading.Event(), []
    lease = writer.grant_lease(30, 2.0)
    won = writer.campaign(key, b"x", lease.lease_id, 2.0)

    def watch() -> None:
        events.extend(backend.watch(key, won.revision, stop))

    thread = threading.Thread(target=watch, daemon=True)
    try:
        thread.start()
        wait_for(lambda: events, 10, "the watch to deliver the put")
        proxy.cut()
        writer.revoke_lease(lease.lease_id, 2.0)  # happens while the watch's member is silent
        # A ping every 5 s (etcd's minimum), answered within 1 s: the restart comes within ~6 s.
        wait_for(lambda: len(events) == 2, 15, "the watch to deliver the delete via the other endpoint")
        assert [e.deleted for e in events] == [False, True]
    finally:
        stop.set()
        thread.join(5)
        backend.close()
        writer.close()
        proxy.close()
    assert not thread.is_alive()
