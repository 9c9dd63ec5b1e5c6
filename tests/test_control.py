"""Job control without etcd: ControlState with a fake clock, and the leader's side (runtime.control) on the in-memory
backend, driven by hand: pause expiry, skip-next consumed once (also by a later leader), a trigger run once, and a
pause the leader has not yet seen refusing its claim without ending the term."""
from __future__ import annotations

import threading

import pytest

from singleton.backends.memory import MemoryBackend
from singleton.core import control as ctl
from singleton.core.clock import FakeClock
from singleton.core.config import Config
from singleton.core.errors import ConfigError
from singleton.ops.control import apply, run_verb
from singleton.runtime.control import JobControls
from singleton.runtime.runs import ClaimOutcome, RunChain
from singleton.runtime.telemetry import Stats
from singleton.runtime.tracks import Track, legacy_spec

T0 = 1_700_000_000.0


class FakeRunner:
    def __init__(self) -> None:
        self.running = False

    def busy(self) -> bool:
        return self.running


def leader(backend: MemoryBackend, clock: FakeClock, cfg: Config, rid: str = "r1") -> tuple[JobControls, Track]:
    """A fresh term of `rid` with one named job, its control records read as a new leader reads them."""
    lease = backend.grant_lease(10, 1.0)
    won = backend.campaign(cfg.leader_key, rid.encode(), lease.lease_id, 1.0)
    assert won.won
    record, _ = backend.get(cfg.job_run_key("tick"), 1.0)
    chain = RunChain(cfg, backend, clock, won.fencing_token, record, job="tick")
    track = Track(legacy_spec(cfg, "tick"), FakeRunner(), chain)
    controls = JobControls(cfg, backend, clock, won.fencing_token, [track], Stats(rid), threading.Event(),
                           threading.Event())
    assert controls.load(lambda: None) is None
    return controls, track


def hand_over(backend: MemoryBackend, cfg: Config) -> None:
    kv, _ = backend.get(cfg.leader_key, 1.0)
    assert kv is not None
    backend.revoke_lease(kv.lease_id, 1.0)


@pytest.fixture
def setup() -> tuple[MemoryBackend, FakeClock, Config]:
    clock = FakeClock(wall=T0)
    return MemoryBackend(clock), clock, Config(endpoints="127.0.0.1:2379", name="c", replica_id="r1")


def events(backend: MemoryBackend, cfg: Config) -> list[ctl.ControlEvent]:
    found = [ctl.decode_event(kv.value) for kv in backend.get_prefix(ctl.events_prefix(cfg, "tick"), 1.0)]
    return sorted((e for e in found if e is not None), key=lambda e: e.seq)


def test_a_pause_with_for_expires_by_the_wall_clock_and_resume_ends_it() -> None:
    state = ctl.ControlState()
    paused, event = ctl.pause(ctl.JobControl(), "ops@h", "freeze", T0, 7200.0)
    assert event.kind == "pause" and event.until_unix_s == T0 + 7200 and paused.event_seq == 1
    assert state.apply("tick", 5, paused.SerializeToString())
    assert state.paused("tick", T0 + 7199.9) and not state.paused("tick", T0 + 7200.0)
    assert not state.paused("other", T0)
    assert not state.apply("tick", 5, ctl.JobControl().SerializeToString())  # old news (a watch replaying a read)
    resumed, _ = ctl.resume(paused, "ops@h", "thaw", T0 + 10)
    assert state.apply("tick", 9, resumed.SerializeToString()) and not state.paused("tick", T0 + 11)
    forever, _ = ctl.pause(resumed, "ops@h", "", T0, None)
    assert state.apply("tick", 12, forever.SerializeToString()) and state.paused("tick", T0 + 10 ** 8)
    assert state.apply("tick", 13, None) and not state.paused("tick", T0) and state.revision("tick") == 0


@pytest.mark.parametrize("text, seconds", [("90", 90.0), ("90s", 90.0), ("15m", 900.0), ("2h", 7200.0),
                                           ("1.5d", 129600.0)])
def test_durations(text: str, seconds: float) -> None:
    assert ctl.parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["2x", "", "-1h", "0", "h", "2 hours"])
def test_bad_durations_are_one_line(text: str) -> None:
    with pytest.raises(ConfigError, match="bad duration"):
        ctl.parse_duration(text)


def test_keys_of_the_single_job_and_of_named_jobs(setup: tuple[MemoryBackend, FakeClock, Config]) -> None:
    _, _, cfg = setup
    assert ctl.control_key(cfg, None) == "/singleton/c/control" and ctl.control_key(cfg, "a") == "/singleton/c/control/a"
    assert ctl.job_of_key(cfg, "/singleton/c/control") == "" and ctl.job_of_key(cfg, "/singleton/c/control/a") == "a"
    assert ctl.job_of_key(cfg, "/singleton/c/control/a/b") is None and ctl.job_of_key(cfg, "/singleton/c/run") is None
    assert ctl.event_key(cfg, "a", 101) == "/singleton/c/jobs/a/events/1"


def test_a_pause_the_leader_has_not_seen_refuses_its_claim_without_ending_the_term(
        setup: tuple[MemoryBackend, FakeClock, Config]) -> None:
    backend, clock, cfg = setup
    controls, track = leader(backend, clock, cfg)  # no watch runs: the leader's view is stale from here on
    assert track.chain is not None and track.chain.claim(100) is ClaimOutcome.CLAIMED
    run_verb(backend, cfg, "pause", "tick", by="ops@h", reason="freeze")  # acknowledged: written to etcd
    assert controls.held(track, 101, clock.wall()) is None  # the watch has not told the leader yet...
    assert track.chain.claim(101) is ClaimOutcome.FAILED  # ...but the claim compares the record: refused, not run
    assert controls.held(track, 101, clock.wall()) == "paused"  # and the one read that told it apart adopted it
    assert track.chain.last_slot == 100


def test_skip_next_is_consumed_once_by_the_claim_and_holds_for_the_next_leader(
        setup: tuple[MemoryBackend, FakeClock, Config]) -> None:
    backend, clock, cfg = setup
    run_verb(backend, cfg, "skip-next", "tick", by="ops@h", reason="bad data")
    controls, track = leader(backend, clock, cfg)
    assert track.chain is not None and track.chain.claim(100) is ClaimOutcome.CLAIMED  # consumes the request
    assert controls.held(track, 100, clock.wall()) == "skip_next"
    assert track.chain.claim(101) is ClaimOutcome.CLAIMED and controls.held(track, 101, clock.wall()) is None
    hand_over(backend, cfg)  # a new leader after the claim of 100, before its instant: it still skips 100
    controls2, track2 = leader(backend, clock, cfg, "r2")
    assert controls2.held(track2, 100, clock.wall()) == "skip_next" and not controls2.state.skip_pending("tick")
    assert [(e.kind, e.slot, e.by, e.reason) for e in events(backend, cfg)] == [
        ("skip-next", 0, "ops@h", "bad data"), ("skipped", 100, "ops@h", "bad data")]


def test_a_trigger_runs_once_even_for_the_next_leader_and_is_refused_while_the_job_runs(
        setup: tuple[MemoryBackend, FakeClock, Config]) -> None:
    backend, clock, cfg = setup
    controls, track = leader(backend, clock, cfg)
    assert track.chain is not None and track.chain.claim(100) is ClaimOutcome.CLAIMED
    started: list[int] = []
    _, asked, _ = run_verb(backend, cfg, "trigger", "tick", by="ops@h", reason="now")
    controls.state.apply("tick", *revision_and_value(backend, cfg))  # as the watch would
    assert controls.serve_triggers(lambda: None, lambda t, ctx: started.append(ctx.slot)) is None
    assert started == [-2]  # run #2 of the record; its slot is negative: not a slot of the schedule
    assert controls.serve_triggers(lambda: None, lambda t, ctx: started.append(ctx.slot)) is None
    hand_over(backend, cfg)
    controls2, track2 = leader(backend, clock, cfg, "r2")
    assert controls2.serve_triggers(lambda: None, lambda t, ctx: started.append(ctx.slot)) is None
    assert started == [-2] and track2.chain is not None and track2.chain.last_slot == 100  # numbering goes on
    track2.runner.running = True  # the job runs (overlap skip): a trigger now is refused, and recorded so
    run_verb(backend, cfg, "trigger", "tick", by="ops@h", reason="again")
    controls2.state.apply("tick", *revision_and_value(backend, cfg))
    assert controls2.serve_triggers(lambda: None, lambda t, ctx: started.append(ctx.slot)) is None
    assert started == [-2] and not controls2.state.triggers("tick")
    kinds = [(e.kind, e.trigger_id == asked.trigger_id) for e in events(backend, cfg)]
    assert kinds == [("trigger", True), ("triggered", True), ("trigger", False), ("trigger-refused", False)]
    assert "running" in events(backend, cfg)[-1].reason


def revision_and_value(backend: MemoryBackend, cfg: Config) -> tuple[int, bytes]:
    kv, _ = backend.get(ctl.control_key(cfg, "tick"), 1.0)
    assert kv is not None
    return kv.mod_revision, kv.value


def test_concurrent_writers_never_lose_an_event(setup: tuple[MemoryBackend, FakeClock, Config]) -> None:
    backend, _, cfg = setup
    threads = [threading.Thread(target=lambda i=i: apply(backend, cfg, "tick", lambda c: ctl.trigger(
        c, f"w{i}", "", T0))) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    kv, _ = backend.get(ctl.control_key(cfg, "tick"), 1.0)
    assert kv is not None and len(ctl.decode_control(kv.value).triggers) == 8
    assert [e.seq for e in events(backend, cfg)] == list(range(1, 9))
