"""The run record on the in-memory backend: slots follow the record whatever the clocks say, a refused claim ends
the term before its job starts, catch-up after a takeover (skip / coalesce), skew, history (a bounded ring)."""
from __future__ import annotations

import logging
import time
from typing import Any

import pytest

from singleton import Config, MemoryBackend, Singleton, StepDownReason, TickContext
from singleton.backends.abc import Backend, Claim
from singleton.core.clock import SystemClock
from singleton.core.timings import FAST
from singleton.core.records import decode_entry, decode_run
from singleton.testing.recorder import Recorder, wait_for
from singleton.v1.run_pb2 import RunRecord


class OffsetClock(SystemClock):
    """A host whose wall clock is off by `offset_s` (its monotonic clock is fine)."""

    def __init__(self, offset_s: float) -> None:
        self.offset_s = offset_s

    def wall(self) -> float:
        return time.time() + self.offset_s


def config(replica: str, **extra: Any) -> Config:
    return Config(endpoints="127.0.0.1:2379", name="rec", replica_id=replica, **{**FAST.config_kwargs(), **extra})


def record(backend: Backend, cfg: Config) -> RunRecord:
    kv, _ = backend.get(cfg.run_key, 1.0)
    assert kv is not None
    decoded = decode_run(kv.value)
    assert decoded is not None
    return decoded


@pytest.mark.parametrize("offset_s", [5.0, 3600.0])
@pytest.mark.parametrize("graceful", [True, False])
def test_a_host_whose_clock_is_behind_never_runs_a_slot_again_nor_stalls(offset_s: float, graceful: bool) -> None:
    backend = MemoryBackend()
    rec = Recorder()
    ahead = Singleton(config("ahead"), rec, backend=backend, clock=OffsetClock(offset_s))
    behind = Singleton(config("behind"), rec, backend=backend)
    ahead.start()
    wait_for(lambda: len(rec.by("ahead")) >= 2, 5, "ticks of the replica whose clock is ahead")
    with behind:
        wait_for(lambda: behind.role.value == "follower", 5, "a standby")
        if graceful:
            ahead.stop()
        else:  # its lease vanishes behind its back, as when it crashes: no handover
            term = ahead.election.term
            assert term is not None
            backend.revoke_lease(term.keeper.lease_id, 1.0)
        took_over_at = time.monotonic()
        wait_for(lambda: len(rec.by("behind")) >= 2, 5, "ticks of the replica whose clock is behind")
    ahead.stop()
    first_behind = rec.by("behind")[0]
    assert first_behind.start_mono - took_over_at < 2.0  # within about a second, not `offset_s` later
    last_ahead = max(r.slot for r in rec.by("ahead"))
    assert first_behind.slot > last_ahead  # numbering follows the record, not the host's clock
    rec.assert_safe()  # no slot twice, no overlap, tokens grow


def test_a_refused_claim_ends_the_term_before_the_job_starts() -> None:
    class RevokingBackend(MemoryBackend):
        """Loses the leader's lease right before its third claim, as a forced revoke would."""

        def __init__(self) -> None:
            super().__init__()
            self.claimed: list[int] = []  # slots whose claim etcd accepted
            self.refused: list[int] = []

        def claim(self, leader_key: str, fencing_token: int, claim: Claim, puts: dict[str, bytes],
                  timeout_s: float) -> int | None:
            slot = RunRecord.FromString(puts[claim[0]]).slot
            if len(self.claimed) == 2 and not self.refused:
                kv, _ = self.get(leader_key, timeout_s)
                assert kv is not None
                self.revoke_lease(kv.lease_id, timeout_s)
            revision = super().claim(leader_key, fencing_token, claim, puts, timeout_s)
            (self.claimed if revision is not None else self.refused).append(slot)
            return revision

        def claim_all(self, leader_key: str, fencing_token: int, claims: list[Claim], puts: dict[str, bytes],
                      timeout_s: float) -> int | None:
            # A claim that also compares the job's control record (runtime.control) comes this way.
            return self.claim(leader_key, fencing_token, claims[0], puts, timeout_s) if claims else \
                super().claim_all(leader_key, fencing_token, claims, puts, timeout_s)

    backend = RevokingBackend()
    started: list[int] = []
    app = Singleton(config("a", lease_ttl_s=10, keepalive_interval_s=3.0, min_remaining_ttl_s=2.0),
                    lambda ctx: started.append(ctx.slot), backend=backend)
    reasons: list[StepDownReason] = []
    app.on_stepped_down(reasons.append)
    with app:
        wait_for(lambda: reasons, 6, "a step-down")
    assert reasons[0] is StepDownReason.CLAIM_REFUSED
    assert backend.refused and backend.refused[0] not in started  # the refused slot never ran
    assert started and set(started) <= set(backend.claimed)  # every run was claimed first
    assert record(backend, app.config).slot == backend.claimed[-1]


def seed_record(backend: MemoryBackend, cfg: Config, slot: int, claimed_at: float) -> None:
    """The last claim of a leader that died: written while nobody leads (an absent key's create revision is 0)."""
    value = RunRecord(seq=7, slot=slot, fencing_token=3, replica_id="dead", claimed_at_unix_s=claimed_at)
    assert backend.guarded_put(cfg.leader_key, 0, cfg.run_key, value.SerializeToString(), 1.0)


def test_skip_counts_the_slots_a_crash_cost_and_coalesce_runs_once_for_them(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="singleton")
    for policy in ("skip", "coalesce"):
        backend = MemoryBackend()
        contexts: list[TickContext] = []
        app = Singleton(config("new", catch_up=policy, catch_up_window_s=3), contexts.append, backend=backend)
        dead_slot = int(time.time()) - 6
        seed_record(backend, app.config, dead_slot, dead_slot + 0.75)
        with app:
            wait_for(lambda: len([c for c in contexts if c.coalesced_slots is None]) >= 1, 5, "a regular tick")
        regular = [c for c in contexts if c.coalesced_slots is None]
        missed = regular[0].slot - dead_slot - 1  # the slots nobody claimed
        if policy == "skip":
            assert not [c for c in contexts if c.coalesced_slots]
            assert app.stats.missed_slots["takeover"] == missed
        else:
            catch_up = contexts[0]
            assert catch_up.coalesced_slots == (regular[0].slot - 3, regular[0].slot - 1)  # the last 3 s (window)
            assert catch_up.slot == regular[0].slot - 1
            assert app.stats.missed_slots["coalesced"] == 3
            assert app.stats.missed_slots["beyond_window"] == missed - 3
        assert f"slots {dead_slot + 1}..{regular[0].slot - 1} ({missed}) were claimed by nobody" in caplog.text


def test_a_claim_from_a_clock_far_ahead_is_reported_as_skew(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="singleton")
    backend = MemoryBackend()
    contexts: list[TickContext] = []
    app = Singleton(config("new"), contexts.append, backend=backend)
    seed_record(backend, app.config, int(time.time()) + 30, time.time() + 30)  # its clock was 30 s ahead
    with app:
        wait_for(lambda: contexts, 5, "a tick")
    assert app.stats.clock_skew_s == pytest.approx(30, abs=1)
    assert "clock skew" in caplog.text
    assert contexts[0].slot > int(time.time()) + 25  # it numbers on after the record, and did not wait 30 s


def test_history_keeps_the_outcomes_in_a_bounded_ring() -> None:
    backend = MemoryBackend()
    calls = [0]

    def job(ctx: TickContext) -> None:
        calls[0] += 1
        if calls[0] == 2:
            raise ValueError("second run fails")

    app = Singleton(config("a", history_size=3), job, backend=backend)
    with app:
        wait_for(lambda: calls[0] >= 6, 10, "six runs")
    entries = [decode_entry(kv.value) for kv in backend.get_prefix(app.config.history_prefix, 1.0)]
    assert len(entries) == 3  # a ring: etcd never holds more than history_size runs
    assert all(e is not None and e.outcome == "ok" and e.replica_id == "a" for e in entries)
    seqs = sorted(e.seq for e in entries if e is not None)
    assert seqs == list(range(seqs[0], seqs[0] + 3)) and seqs[-1] >= 4
