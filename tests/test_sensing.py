"""Death sensing: the pure decision (fake clock), then its sockets against a real listener and the cuttable proxy
(a reset the leader survives, a blackhole) with the in-memory backend holding the lease."""
from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest

from singleton.backends.abc import KeyValue
from singleton.backends.memory import MemoryBackend
from singleton.core.clock import FakeClock, SystemClock
from singleton.core.config import Config
from singleton.core.election import Election
from singleton.core.records import leader_record
from singleton.runtime.campaign import Campaigner
from singleton.core.sensing import Action, DeathSense, Outcome, State
from singleton.runtime.sense_listener import SenseListener, split_address
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
