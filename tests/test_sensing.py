"""Death sensing: the pure decision (fake clock), then its sockets against a real listener and the cuttable proxy
(a reset the leader survives, a blackhole) with the in-memory backend holding the lease."""
from __future__ import annotations

import logging
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest

from singleton.backends.abc import KeyValue
from singleton.backends.etcd import EtcdBackend
from singleton.backends.memory import MemoryBackend
from singleton.core.clock import FakeClock, SystemClock
from singleton.core.config import Config
from singleton.core.election import Election
from singleton.core.records import leader_record
from singleton.dev.embedded import EtcdCluster
from singleton.runtime.campaign import Campaigner
from singleton.core.sensing import Action, DeathSense, Outcome, State
from singleton.runtime.sense_listener import SenseListener, bind_address, split_address
from singleton.runtime.sensing import Sensor
from singleton.testing.proxy import CuttableProxy
from singleton.testing.recorder import wait_for


def connected_sense(clock: FakeClock) -> DeathSense:
    sense = DeathSense(clock)
    assert sense.start().action is Action.CONNECT
    assert sense.connected(Outcome.GREETED).action is Action.RECV
    clock.advance(5)  # a stable connection
    return sense


@pytest.mark.parametrize("end", [Outcome.EOF, Outcome.RESET])
def test_a_closed_connection_then_a_refused_probe_is_death(end: Outcome) -> None:
    clock = FakeClock()
    sense = connected_sense(clock)
    probe = sense.closed(end)
    assert probe.action is Action.CONNECT and probe.delay_s == 0 and sense.state is State.PROBING
    assert sense.connected(Outcome.REFUSED).action is Action.REVOKE and sense.state is State.DEAD


@pytest.mark.parametrize("end", [Outcome.TIMEOUT, Outcome.UNREACHABLE])
def test_a_timeout_or_unreachable_host_is_never_death(end: Outcome) -> None:
    clock = FakeClock()
    sense = connected_sense(clock)
    step = sense.closed(end)
    assert step.action is Action.CONNECT and step.delay_s > 0 and sense.state is State.CONNECTING
    # Even a refusal now proves nothing: no verified connection was just lost to an EOF or a reset.
    for _ in range(10):
        step = sense.connected(Outcome.REFUSED)
        assert step.action is Action.CONNECT and sense.state is State.CONNECTING


def test_a_probe_closed_unanswered_is_asked_again_within_the_window() -> None:
    clock = FakeClock()
    sense = connected_sense(clock)
    sense.closed(Outcome.EOF)
    for end in (Outcome.RESET, Outcome.EOF):  # a dying process's listener still accepted, then reset
        step = sense.connected(end)
        assert step.action is Action.CONNECT and sense.state is State.PROBING
        clock.advance(step.delay_s)
    assert sense.connected(Outcome.REFUSED).action is Action.REVOKE
    # The same, past the window: no longer "at once".
    sense = connected_sense(clock)
    sense.closed(Outcome.EOF)
    clock.advance(sense.probe_window_s + 0.1)
    assert sense.connected(Outcome.EOF).delay_s > 0 and sense.state is State.CONNECTING


@pytest.mark.parametrize("probe", [Outcome.TIMEOUT, Outcome.UNREACHABLE, Outcome.STRANGER])
def test_a_probe_that_is_not_refused_is_not_death(probe: Outcome) -> None:
    clock = FakeClock()
    sense = connected_sense(clock)
    sense.closed(Outcome.RESET)
    step = sense.connected(probe)
    assert step.action is Action.CONNECT and step.delay_s > 0 and sense.state is State.CONNECTING


def test_a_probe_that_reaches_the_leader_again_goes_back_to_sleep() -> None:
    clock = FakeClock()
    sense = connected_sense(clock)
    sense.closed(Outcome.RESET)  # a proxy reset the connection; the leader lives
    assert sense.connected(Outcome.GREETED).action is Action.RECV and sense.state is State.CONNECTED


def test_a_refusal_long_after_the_close_is_not_at_once() -> None:
    clock = FakeClock()
    sense = connected_sense(clock)
    sense.closed(Outcome.EOF)
    clock.advance(sense.probe_window_s + 0.5)  # this standby was itself paused between the close and the probe
    assert sense.connected(Outcome.REFUSED).action is Action.CONNECT and sense.state is State.CONNECTING


def test_a_refusal_before_any_connection_is_not_death() -> None:
    sense = DeathSense(FakeClock())
    sense.start()
    for _ in range(5):
        assert sense.connected(Outcome.REFUSED).action is Action.CONNECT
    assert sense.state is State.CONNECTING


def test_back_off_grows_to_its_cap_and_resets_once_connected() -> None:
    sense = DeathSense(FakeClock(), backoff_min_s=0.2, backoff_max_s=2.0)
    sense.start()
    delays = [sense.connected(Outcome.TIMEOUT).delay_s for _ in range(7)]
    assert delays == [0.2, 0.4, 0.8, 1.6, 2.0, 2.0, 2.0]
    sense.connected(Outcome.GREETED)
    assert sense.closed(Outcome.TIMEOUT).delay_s == 0.2


def test_a_connection_that_keeps_dropping_stops_being_probed() -> None:
    clock = FakeClock()
    sense = DeathSense(clock, stable_s=2.0, max_flaps=3)
    sense.start()
    sense.connected(Outcome.GREETED)
    probes = 0
    for _ in range(3):
        clock.advance(0.1)
        step = sense.closed(Outcome.EOF)
        if step.action is Action.CONNECT and sense.state is State.PROBING:
            probes += 1
            sense.connected(Outcome.GREETED)
    assert probes == 2 and sense.state is State.CONNECTING  # the third quick drop backs off instead


def test_steps_out_of_order_are_refused() -> None:
    sense = DeathSense(FakeClock())
    with pytest.raises(ValueError):
        sense.closed(Outcome.EOF)
    sense.connected(Outcome.GREETED)
    with pytest.raises(ValueError):
        sense.connected(Outcome.GREETED)


def test_addresses() -> None:
    assert split_address("10.0.0.7:4000") == ("10.0.0.7", 4000)
    assert split_address("[::1]:4000") == ("::1", 4000)
    for bad in ("nohost", ":80", "h:port"):
        with pytest.raises(ValueError):
            split_address(bad)


def test_all_interfaces_binds_both_families_where_it_can() -> None:
    if socket.has_dualstack_ipv6():
        assert bind_address("::", "10.0.0.7") == ("::", socket.AF_INET6, True)  # "::" alone refused IPv4 standbys
        assert bind_address("", "10.0.0.7") == ("::", socket.AF_INET6, True)
        assert bind_address("0.0.0.0", "fd00::7") == ("::", socket.AF_INET6, True)  # an IPv6-only cluster's $POD_IP
    else:  # no IPv6 here: as asked
        assert bind_address("", "10.0.0.7") == ("", socket.AF_INET, False)
    assert bind_address("0.0.0.0", "10.0.0.7") == ("0.0.0.0", socket.AF_INET, False)
    assert bind_address("127.0.0.1", "127.0.0.1") == ("127.0.0.1", socket.AF_INET, False)
    assert bind_address("::1", "::1") == ("::1", socket.AF_INET6, False)


# --- the sockets -------------------------------------------------------------------------------------------
LEADER_KEY = "/singleton/x/leader"


@pytest.fixture
def lease() -> Iterator[tuple[MemoryBackend, int]]:
    backend = MemoryBackend()
    granted = backend.grant_lease(10, 1.0)
    assert backend.campaign(LEADER_KEY, b"leader", granted.lease_id, 1.0).won
    yield backend, granted.lease_id
    backend.close()


def sensor_for(listener: SenseListener, backend: MemoryBackend, lease_id: int, port: int | None = None) -> Sensor:
    address = listener.address if port is None else f"127.0.0.1:{port}"
    return Sensor(address, listener.nonce, lease_id, backend, SystemClock(), 1.0, "leader", LEADER_KEY).start()


def test_a_listener_that_goes_away_has_its_lease_revoked(lease: tuple[MemoryBackend, int]) -> None:
    backend, lease_id = lease
    listener = SenseListener("127.0.0.1", 0, "").start()
    sensor = sensor_for(listener, backend, lease_id)
    try:
        wait_for(lambda: sensor.sense.state is State.CONNECTED, 5, "the sensor to connect")
        listener.close()  # to the standby, exactly what the kernel does for a killed process
        assert sensor.revoked.wait(5)
        assert backend.keep_alive_once(lease_id, 1.0) == 0 and backend.get(LEADER_KEY, 1.0)[0] is None
    finally:
        sensor.stop()


def test_a_leader_that_handed_over_before_going_away_is_not_revoked(lease: tuple[MemoryBackend, int]) -> None:
    backend, lease_id = lease
    listener = SenseListener("127.0.0.1", 0, "").start()
    sensor = sensor_for(listener, backend, lease_id)
    try:
        wait_for(lambda: sensor.sense.state is State.CONNECTED, 5, "the sensor to connect")
        term = backend.get(LEADER_KEY, 1.0)[0]
        assert term is not None and backend.resign(LEADER_KEY, term.create_revision, "/singleton/x/handover", b"h", 1.0)
        listener.close()  # a graceful stop: the key went first
        wait_for(lambda: sensor.sense.state is State.DEAD and not sensor._thread.is_alive(), 5, "the sensor to end")
        assert not sensor.revoked.is_set() and backend.keep_alive_once(lease_id, 1.0) == 10
    finally:
        sensor.stop()


def test_a_reset_by_a_proxy_while_the_leader_lives_is_not_death(lease: tuple[MemoryBackend, int]) -> None:
    backend, lease_id = lease
    listener = SenseListener("127.0.0.1", 0, "").start()
    proxy = CuttableProxy("127.0.0.1", listener.port)
    sensor = sensor_for(listener, backend, lease_id, proxy.port)
    try:
        for _ in range(2):
            wait_for(lambda: sensor.sense.state is State.CONNECTED, 5, "the sensor to connect")
            accepted = listener.accepted
            proxy.reset()
            # It reconnects through the proxy (a fresh connection at the listener), and revokes nothing.
            wait_for(lambda: sensor.sense.state is State.CONNECTED and listener.accepted > accepted, 5,
                     "the sensor to reconnect")
        assert not sensor.revoked.is_set() and backend.keep_alive_once(lease_id, 1.0) == 10
    finally:
        sensor.stop()
        proxy.close()
        listener.close()


def test_a_probe_dials_the_address_that_greeted_not_the_name_again(lease: tuple[MemoryBackend, int],
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """An advertised *name* may resolve elsewhere by the time of the probe (its DNS moved; or it has several
    addresses and another one refuses while the leader's is cut off): a refusal there is not the leader's."""
    backend, lease_id = lease
    listener = SenseListener("127.0.0.1", 0, "").start()
    proxy = CuttableProxy("127.0.0.1", listener.port)
    resolves_to = ["127.0.0.1"]
    real_getaddrinfo = socket.getaddrinfo

    def getaddrinfo(host: str, *args: object, **kwargs: object) -> object:
        return real_getaddrinfo(resolves_to[0] if host == "leader.invalid" else host, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    sensor = Sensor(f"leader.invalid:{proxy.port}", listener.nonce, lease_id, backend, SystemClock(), 1.0, "leader",
                    LEADER_KEY).start()
    try:
        wait_for(lambda: sensor.sense.state is State.CONNECTED, 5, "the sensor to connect")
        resolves_to[0] = "127.0.0.2"  # the name now leads where nothing listens on that port: refused
        accepted = listener.accepted
        proxy.reset()  # the connection ends while the leader lives
        wait_for(lambda: sensor.revoked.is_set() or (sensor.sense.state is State.CONNECTED
                                                     and listener.accepted > accepted), 5, "the sensor to reconnect")
        assert not sensor.revoked.is_set() and backend.keep_alive_once(lease_id, 1.0) == 10
    finally:
        sensor.stop()
        proxy.close()
        listener.close()


def test_a_blackhole_is_not_death(lease: tuple[MemoryBackend, int]) -> None:
    backend, lease_id = lease
    listener = SenseListener("127.0.0.1", 0, "").start()
    proxy = CuttableProxy("127.0.0.1", listener.port)
    sensor = sensor_for(listener, backend, lease_id, proxy.port)
    try:
        wait_for(lambda: sensor.sense.state is State.CONNECTED, 5, "the sensor to connect")
        proxy.cut()
        listener.close()  # the leader dies behind the partition: nothing reaches the standby
        assert not sensor.revoked.wait(1.5)
        assert sensor.sense.state is State.CONNECTED and backend.keep_alive_once(lease_id, 1.0) == 10
    finally:
        sensor.stop()
        proxy.close()


def test_something_else_on_the_port_is_never_sensed(lease: tuple[MemoryBackend, int]) -> None:
    backend, lease_id = lease
    stranger = socket.create_server(("127.0.0.1", 0))
    port = stranger.getsockname()[1]
    accepted: list[socket.socket] = []

    def serve() -> None:
        conn, _ = stranger.accept()
        conn.sendall(b"SSH-2.0-OpenSSH\n")
        accepted.append(conn)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    sensor = Sensor(f"127.0.0.1:{port}", "abc", lease_id, backend, SystemClock(), 1.0, "leader", LEADER_KEY).start()
    try:
        thread.join(5)
        assert accepted, "the sensor never connected"
        wait_for(lambda: sensor.sense.state is State.CONNECTING, 5, "the greeting to be judged")
        accepted[0].close()
        stranger.close()  # refused from now on, but no verified connection was ever held
        assert not sensor.revoked.wait(1.0)
    finally:
        sensor.stop()
        stranger.close()


def test_past_its_cap_the_listener_turns_connections_away_ungreeted() -> None:
    """A flood on the (by default exposed) port must not run the leader out of descriptors."""
    listener = SenseListener("127.0.0.1", 0, "", max_held=2).start()
    conns = [socket.create_connection(("127.0.0.1", listener.port), timeout=5) for _ in range(3)]
    try:
        for conn in conns[:2]:
            assert conn.recv(64) == b"singleton-sense/1 " + listener.nonce.encode() + b"\n"
        assert conns[2].recv(64) == b""  # closed ungreeted: a standby backs off, never reads death into it
        assert listener.turned_away == 1 and listener.accepted == 2
    finally:
        for conn in conns:
            conn.close()
        listener.close()


_DESCRIPTORS_EXHAUSTED = """
import resource, socket, sys, time
from singleton.runtime.sense_listener import SenseListener
listener = SenseListener("127.0.0.1", 0, "").start()
resource.setrlimit(resource.RLIMIT_NOFILE, (64, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
held = []
try:
    for _ in range(100):
        held.append(socket.socket())
except OSError:
    pass
print(listener.port, flush=True)
deadline = time.monotonic() + 10
while listener.accept_errors == 0 and time.monotonic() < deadline:
    time.sleep(0.01)
first = listener.accept_errors
time.sleep(1.0)
print(first, listener.accept_errors, flush=True)
"""


def test_an_accept_that_fails_for_want_of_descriptors_does_not_spin() -> None:
    """EMFILE leaves the connection queued and the socket readable: a loop that retried at once would burn the
    CPU (and the GIL the leader's ticks need) for as long as it lasts."""
    proc = subprocess.Popen([sys.executable, "-c", _DESCRIPTORS_EXHAUSTED], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())
        conn = socket.create_connection(("127.0.0.1", port), timeout=5)  # completes in its kernel's backlog
        first, later = map(int, proc.stdout.readline().split())
        conn.close()
        assert first >= 1, "accept never failed: the descriptor limit did not bite"
        assert later - first <= 20  # one try per pause (0.2 s) in the second that followed; a spin makes thousands
    finally:
        proc.kill()
        proc.wait(5)


def test_ten_standbys_sensing_one_death_revoke_quietly(etcd: EtcdCluster, caplog: pytest.LogCaptureFixture) -> None:
    """Every standby senses the same death at once: whichever revokes first wins, the others find the key gone
    (or revoke a lease already gone, which etcd answers with not-found): no warning about a failed revoke."""
    caplog.set_level(logging.INFO, logger="singleton")
    backend = EtcdBackend(etcd.endpoints)
    key = "/singleton/ten-standbys/leader"
    lease_id = backend.grant_lease(10, 5.0).lease_id
    assert backend.campaign(key, b"leader", lease_id, 5.0).won
    listener = SenseListener("127.0.0.1", 0, "").start()
    sensors = [Sensor(listener.address, listener.nonce, lease_id, backend, SystemClock(), 5.0, "leader", key).start()
               for _ in range(10)]
    try:
        wait_for(lambda: all(s.sense.state is State.CONNECTED for s in sensors), 10, "every sensor to connect")
        listener.close()
        for sensor in sensors:
            sensor.join(10)
        assert not any(s._thread.is_alive() for s in sensors)
        assert 1 <= sum(s.revoked.is_set() for s in sensors) <= 10 and backend.get(key, 5.0)[0] is None
        assert not [r for r in caplog.records if "could not revoke" in r.getMessage()]
    finally:
        for sensor in sensors:
            sensor.stop()
        backend.close()


_STUCK_LEADER = """
import re, sys
from singleton.runtime.sense_listener import SenseListener
listener = SenseListener("127.0.0.1", 0, "").start()
print(listener.port, listener.nonce, flush=True)
sys.stdin.readline()
print("stuck", flush=True)
re.match(r"(a+)+$", "a" * 64 + "b")  # holds the GIL (the regex engine never lets go of it): no thread runs
"""


def test_a_leader_whose_threads_are_stuck_is_not_dead(lease: tuple[MemoryBackend, int]) -> None:
    """A job holding the GIL freezes the listener's thread, not its sockets: the kernel still holds the
    connections and completes a probe's handshake from the backlog; the greeting that does not come is a timeout."""
    backend, lease_id = lease
    proc = subprocess.Popen([sys.executable, "-c", _STUCK_LEADER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)
    proxy: CuttableProxy | None = None
    sensor: Sensor | None = None
    try:
        assert proc.stdin is not None and proc.stdout is not None
        port, nonce = proc.stdout.readline().split()
        proxy = CuttableProxy("127.0.0.1", int(port))
        sensor = Sensor(f"127.0.0.1:{proxy.port}", nonce, lease_id, backend, SystemClock(), 1.0, "leader",
                        LEADER_KEY).start()
        wait_for(lambda: sensor is not None and sensor.sense.state is State.CONNECTED, 5, "the sensor to connect")
        proc.stdin.write("go\n")
        proc.stdin.flush()
        assert proc.stdout.readline().strip() == "stuck"
        proxy.reset()  # the held connection ends while the leader lives, stuck: the probe meets no greeting
        wait_for(lambda: sensor is not None and (sensor.revoked.is_set() or sensor.sense.state is State.CONNECTING),
                 5, "the probe to be judged")
        assert not sensor.revoked.is_set() and backend.keep_alive_once(lease_id, 1.0) == 10
        assert proc.poll() is None  # it was alive and stuck all along
    finally:
        if sensor is not None:
            sensor.stop()
            sensor.join(5)
        if proxy is not None:
            proxy.close()
        proc.kill()
        proc.wait(5)


# --- which leaders a standby senses ------------------------------------------------------------------------
def leader_kv(lease_id: int, address: str = "", nonce: str = "") -> KeyValue:
    return KeyValue("/singleton/x/leader", leader_record("other", lease_id, 0.0, address, nonce), 5, 5, lease_id)


@pytest.mark.parametrize("fast_failover", [True, False])
def test_a_standby_senses_only_leaders_that_offer_it(fast_failover: bool) -> None:
    backend = MemoryBackend()
    config = Config(endpoints="http://127.0.0.1:1", name="x", fast_failover=fast_failover)
    campaigner = Campaigner(config, backend, FakeClock(), Election(), threading.Event(), lambda kv: None)
    campaigner.sensing = ("127.0.0.1:1", "ours")
    try:
        campaigner._sense(leader_kv(7))  # a record from a version without sensing (or with it off)
        assert campaigner.sensor is None
        campaigner._sense(leader_kv(7, "127.0.0.1:1", "ours"))  # our own record (a restart under our own lease)
        assert campaigner.sensor is None
        campaigner._sense(leader_kv(7, "127.0.0.1:1", "theirs"))
        assert (campaigner.sensor is not None) is fast_failover
        first = campaigner.sensor
        campaigner._sense(leader_kv(7, "127.0.0.1:1", "theirs"))  # the same term: the same sensor
        assert campaigner.sensor is first
        campaigner._sense(leader_kv(8, "127.0.0.1:1", "theirs"))  # a new term: a new sensor
        assert (campaigner.sensor is not first) is fast_failover
    finally:
        campaigner._sense(None)
        backend.close()
    assert campaigner.sensor is None


def test_the_switch_and_its_variable(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from singleton.ops.cliargs import build_parser

    base = ["run", "--endpoints", "http://127.0.0.1:1", "--name", "x", "--job", "m:f"]
    assert build_parser().parse_args(base).fast_failover is True
    assert build_parser().parse_args([*base, "--no-fast-failover"]).fast_failover is False
    monkeypatch.setenv("SINGLETON_FAST_FAILOVER", "off")
    assert build_parser().parse_args(base).fast_failover is False
    assert build_parser().parse_args([*base, "--fast-failover"]).fast_failover is True
    monkeypatch.setenv("SINGLETON_FAST_FAILOVER", "maybe")
    with pytest.raises(SystemExit) as exit_:
        build_parser()
    assert exit_.value.code == 2
    assert capsys.readouterr().err == "singleton: error: SINGLETON_FAST_FAILOVER='maybe' must be on or off\n"


def test_a_taken_sense_port_is_one_clear_error() -> None:
    from singleton.core.errors import ConfigError
    from singleton.runtime.runner import Singleton

    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        backend = MemoryBackend()
        app = Singleton(Config(endpoints="http://127.0.0.1:1", name="x", sense_host="127.0.0.1", sense_port=port),
                        job=lambda ctx: None, backend=backend)
        with pytest.raises(ConfigError, match=f"cannot listen for fast failover on 127.0.0.1:{port}: address already "
                                              f"in use; give another --sense-port"):
            app.run(handle_signals=False)
        backend.close()
