"""One suite, two backends: the in-memory one and real etcd must agree on every behaviour we rely on."""
from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from singleton.backends.abc import Backend
from singleton.backends.etcd import EtcdBackend
from singleton.backends.memory import MemoryBackend
from singleton.core.clock import FakeClock
from singleton.core.errors import BackendTimeout, LeaseNotFound, WatchCompacted
from singleton.dev.embedded import EtcdCluster

T = 2.0  # per-call deadline


@pytest.fixture(params=["memory", "etcd"])
def backend(request: pytest.FixtureRequest) -> Iterator[Backend]:
    if request.param == "memory":
        b: Backend = MemoryBackend()
    else:
        cluster: EtcdCluster = request.getfixturevalue("etcd")
        b = EtcdBackend(cluster.endpoints)
    yield b
    b.close()


def collect(backend: Backend, key: str, start: int, n: int, timeout_s: float = 5.0) -> list:
    stop, out = threading.Event(), []

    def run() -> None:
        for ev in backend.watch(key, start, stop):
            out.append(ev)
            if len(out) >= n:
                return

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(timeout_s)
    stop.set()
    t.join(2)
    return out


def test_campaign_win_then_lose(backend: Backend, name: str) -> None:
    key = f"/c/{name}/leader"
    a, b = backend.grant_lease(10, T), backend.grant_lease(10, T)
    won = backend.campaign(key, b"a", a.lease_id, T)
    assert won.won and won.leader is not None and won.leader.value == b"a"
    assert won.fencing_token == won.leader.create_revision == won.revision
    lost = backend.campaign(key, b"b", b.lease_id, T)
    assert not lost.won and lost.fencing_token == won.fencing_token and lost.leader.value == b"a"
    for lease in (a, b):
        backend.revoke_lease(lease.lease_id, T)


def test_revoking_the_lease_deletes_the_key_and_the_token_grows(backend: Backend, name: str) -> None:
    key = f"/c/{name}/leader"
    tokens = []
    for _ in range(3):
        lease = backend.grant_lease(10, T)
        result = backend.campaign(key, b"x", lease.lease_id, T)
        assert result.won
        tokens.append(result.fencing_token)
        backend.revoke_lease(lease.lease_id, T)
        assert backend.get(key, T)[0] is None
    assert tokens == sorted(tokens) and len(set(tokens)) == 3


def test_keepalive_renews_and_answers_zero_for_a_gone_lease(backend: Backend) -> None:
    lease = backend.grant_lease(5, T)
    assert backend.keep_alive_once(lease.lease_id, T) == 5
    assert 0 < backend.lease_remaining_s(lease.lease_id, T) <= 5
    backend.revoke_lease(lease.lease_id, T)
    assert backend.keep_alive_once(lease.lease_id, T) == 0
    assert backend.lease_remaining_s(lease.lease_id, T) == -1
    backend.revoke_lease(lease.lease_id, T)  # revoking twice is not an error


def test_guarded_write_is_refused_for_a_stale_token(backend: Backend, name: str) -> None:
    key, data = f"/c/{name}/leader", f"/c/{name}/data"
    first = backend.grant_lease(10, T)
    old = backend.campaign(key, b"1", first.lease_id, T).fencing_token
    assert backend.guarded_put(key, old, data, b"from-1", T)
    backend.revoke_lease(first.lease_id, T)
    second = backend.grant_lease(10, T)
    new = backend.campaign(key, b"2", second.lease_id, T).fencing_token
    assert new > old
    assert not backend.guarded_put(key, old, data, b"stale", T)
    assert not backend.guarded_delete(key, old, data, T)
    assert backend.get(data, T)[0].value == b"from-1"
    assert backend.guarded_put(key, new, data, b"from-2", T)
    assert backend.guarded_delete(key, new, data, T)
    backend.revoke_lease(second.lease_id, T)


def test_resign_writes_the_handover_and_deletes_the_leader_in_one_revision(backend: Backend, name: str) -> None:
    key, handover = f"/c/{name}/leader", f"/c/{name}/handover"
    lease = backend.grant_lease(10, T)
    won = backend.campaign(key, b"x", lease.lease_id, T, also_read=(handover,))
    assert won.extra == {}
    assert not backend.resign(key, won.fencing_token + 100, handover, b"h", T)
    assert backend.resign(key, won.fencing_token, handover, b"h", T)
    events = collect(backend, key, won.revision + 1, 1)
    assert len(events) == 1 and events[0].deleted
    hv, _ = backend.get(handover, T)
    assert hv is not None and hv.value == b"h" and hv.mod_revision == events[0].revision
    lease2 = backend.grant_lease(10, T)
    again = backend.campaign(key, b"y", lease2.lease_id, T, also_read=(handover,))
    assert again.won and again.extra[handover].value == b"h"
    backend.revoke_lease(lease.lease_id, T)
    backend.revoke_lease(lease2.lease_id, T)


def test_watch_replays_from_a_revision_and_sees_the_delete(backend: Backend, name: str) -> None:
    key = f"/c/{name}/leader"
    lease = backend.grant_lease(10, T)
    won = backend.campaign(key, b"x", lease.lease_id, T)
    backend.revoke_lease(lease.lease_id, T)  # happens before the watch starts: must still be delivered
    events = collect(backend, key, won.revision, 2)
    assert [e.deleted for e in events] == [False, True]
    assert events[0].kv.create_revision == won.fencing_token


def test_a_lapsed_lease_deletes_the_key_and_the_watch_sees_it(backend: Backend, name: str) -> None:
    key = f"/c/{name}/leader"
    lease = backend.grant_lease(2, T)
    won = backend.campaign(key, b"x", lease.lease_id, T)
    started = time.monotonic()
    events = collect(backend, key, won.revision + 1, 1, timeout_s=8.0)
    assert events and events[0].deleted
    assert 1.0 <= time.monotonic() - started <= 7.0


def test_watch_from_a_compacted_revision_raises(backend: Backend, name: str) -> None:
    key = f"/c/{name}/leader"
    lease = backend.grant_lease(10, T)
    won = backend.campaign(key, b"x", lease.lease_id, T)
    backend.revoke_lease(lease.lease_id, T)
    compact(backend, backend.get(key, T)[1])
    with pytest.raises(WatchCompacted):
        collect_raising(backend, key, won.revision)


def collect_raising(backend: Backend, key: str, start: int) -> None:
    stop = threading.Event()
    timer = threading.Timer(5.0, stop.set)
    timer.start()
    try:
        for _ in backend.watch(key, start, stop):
            pass
    finally:
        timer.cancel()


def compact(backend: Backend, revision: int) -> None:
    assert isinstance(backend, (MemoryBackend, EtcdBackend))
    backend.compact(revision, T)


def test_a_watch_may_start_at_the_compaction_revision_but_not_below(backend: Backend, name: str) -> None:
    key, data = f"/c/{name}/leader", f"/c/{name}/data"
    lease = backend.grant_lease(10, T)
    token = backend.campaign(key, b"x", lease.lease_id, T).fencing_token
    assert backend.guarded_put(key, token, data, b"1", T)
    assert backend.guarded_put(key, token, data, b"2", T)
    put_at = backend.get(data, T)[0].mod_revision
    compact(backend, put_at)
    with pytest.raises(WatchCompacted):
        collect_raising(backend, data, put_at - 1)
    events = collect(backend, data, put_at, 1)  # the put made at exactly the compaction revision survives it
    assert [(e.deleted, e.revision, e.kv.value) for e in events] == [(False, put_at, b"2")]
    # A deletion at the compaction revision does not: its tombstone goes with the history.
    assert backend.guarded_delete(key, token, data, T)
    deleted_at = backend.get(data, T)[1]
    compact(backend, deleted_at)
    with pytest.raises(WatchCompacted):
        compact(backend, deleted_at)  # etcd: "required revision has been compacted"
    assert backend.guarded_put(key, token, data, b"3", T)
    events = collect(backend, data, deleted_at, 1)
    assert [(e.deleted, e.revision) for e in events] == [(False, deleted_at + 1)]
    backend.revoke_lease(lease.lease_id, T)


def test_a_retried_campaign_that_finds_its_own_lease_has_won(backend: Backend, name: str) -> None:
    key = f"/c/{name}/leader"
    lease, other = backend.grant_lease(10, T), backend.grant_lease(10, T)
    first = backend.campaign(key, b"x", lease.lease_id, T)
    again = backend.campaign(key, b"x", lease.lease_id, T)  # as after an answer lost on the way back
    assert again.won and again.fencing_token == first.fencing_token and again.revision == first.revision
    assert not backend.campaign(key, b"y", other.lease_id, T).won
    for held in (lease, other):
        backend.revoke_lease(held.lease_id, T)


def test_campaigning_with_a_lease_that_does_not_exist_raises_lease_not_found(backend: Backend, name: str) -> None:
    key = f"/c/{name}/leader"
    gone = backend.grant_lease(10, T)
    backend.revoke_lease(gone.lease_id, T)
    for lease_id in (gone.lease_id, 0x7EADBEEF5EED):  # revoked; never granted
        with pytest.raises(LeaseNotFound):
            backend.campaign(key, b"x", lease_id, T)
    assert backend.get(key, T)[0] is None
    # etcd checks the lease only of a put that runs: against a held key the campaign is simply lost.
    holder = backend.grant_lease(10, T)
    assert backend.campaign(key, b"h", holder.lease_id, T).won
    assert not backend.campaign(key, b"x", gone.lease_id, T).won
    backend.revoke_lease(holder.lease_id, T)


def test_revoking_a_lease_deletes_all_its_keys_in_one_revision(backend: Backend, name: str) -> None:
    keys = [f"/c/{name}/a", f"/c/{name}/b"]
    lease = backend.grant_lease(10, T)
    for key in keys:
        assert backend.campaign(key, b"x", lease.lease_id, T).won
    before = backend.get(keys[0], T)[1]
    backend.revoke_lease(lease.lease_id, T)
    assert backend.get(keys[0], T)[1] == before + 1
    for key in keys:
        events = collect(backend, key, before + 1, 1)
        assert [(e.deleted, e.revision) for e in events] == [(True, before + 1)]
    empty = backend.grant_lease(10, T)
    backend.revoke_lease(empty.lease_id, T)  # deletes nothing, so takes no revision
    assert backend.get(keys[0], T)[1] == before + 1


def test_memory_last_ok_at_is_on_the_injected_clock() -> None:
    clock = FakeClock(monotonic=5000.0)
    backend = MemoryBackend(clock)
    backend.get("/k", T)
    assert backend.last_ok_at == 5000.0
    clock.advance(7.0)
    backend.hang()
    with pytest.raises(BackendTimeout):
        backend.get("/k", 0.05)  # no answer: readiness must see the silence grow
    assert backend.last_ok_at == 5000.0
    backend.heal()
    backend.get("/k", T)
    assert backend.last_ok_at == 5007.0


# --- the run record's claim chain ------------------------------------------------------------------------
def lead(backend: Backend, key: str) -> tuple[int, int]:
    lease = backend.grant_lease(10, T)
    result = backend.campaign(key, b"x", lease.lease_id, T)
    assert result.won
    return result.fencing_token, lease.lease_id


def test_claims_chain_on_the_record_revision_and_a_stale_link_or_token_is_refused(backend: Backend, name: str) -> None:
    leader, run = f"/c/{name}/leader", f"/c/{name}/run"
    token, lease = lead(backend, leader)
    first = backend.claim(leader, token, (run, 0), {run: b"1"}, T)  # 0: the record does not exist yet
    assert first is not None
    kv, _ = backend.get(run, T)
    assert kv is not None and kv.mod_revision == first and kv.value == b"1"
    assert backend.claim(leader, token, (run, 0), {run: b"again"}, T) is None  # a stale link of the chain
    second = backend.claim(leader, token, (run, first), {run: b"2", f"/c/{name}/history/0": b"h"}, T)
    assert second is not None and second > first
    assert backend.claim(leader, token + 1, (run, second), {run: b"3"}, T) is None  # not the term's token
    backend.revoke_lease(lease, T)
    assert backend.claim(leader, token, (run, second), {run: b"4"}, T) is None  # the term is over
    assert backend.get(run, T)[0].value == b"2"  # type: ignore[union-attr]
    assert [kv.value for kv in backend.get_prefix(f"/c/{name}/history/", T)] == [b"h"]


def test_two_leaders_racing_for_one_slot_get_exactly_one_claim(backend: Backend, name: str) -> None:
    leader, run = f"/c/{name}/leader", f"/c/{name}/run"
    token, lease = lead(backend, leader)
    base = backend.claim(leader, token, (run, 0), {run: b"s1"}, T)
    assert base is not None
    # Both claimants saw the same record (the second thinks it still leads on the same term): one wins.
    results = [backend.claim(leader, token, (run, base), {run: v}, T) for v in (b"a", b"b")]
    assert sum(r is not None for r in results) == 1
    backend.revoke_lease(lease, T)


def test_a_claim_after_a_compaction_still_chains(backend: Backend, name: str) -> None:
    leader, run = f"/c/{name}/leader", f"/c/{name}/run"
    token, lease = lead(backend, leader)
    rev = backend.claim(leader, token, (run, 0), {run: b"1"}, T)
    assert rev is not None
    for i in range(3):
        rev = backend.claim(leader, token, (run, rev), {run: str(i).encode()}, T)
        assert rev is not None
    backend.compact(rev, T)  # type: ignore[attr-defined]
    assert backend.claim(leader, token, (run, rev), {run: b"after"}, T) is not None
    backend.revoke_lease(lease, T)


def test_guarded_writes_fenced_by_a_superseded_claim_are_refused(backend: Backend, name: str) -> None:
    leader, run, out = f"/c/{name}/leader", f"/c/{name}/run", f"/c/{name}/out"
    token, lease = lead(backend, leader)
    first = backend.claim(leader, token, (run, 0), {run: b"1"}, T)
    assert first is not None
    assert backend.guarded_put(leader, token, out, b"by run 1", T, claim=(run, first))
    second = backend.claim(leader, token, (run, first), {run: b"2"}, T)
    assert second is not None
    assert not backend.guarded_put(leader, token, out, b"zombie", T, claim=(run, first))  # same token, old claim
    assert not backend.guarded_delete(leader, token, out, T, claim=(run, first))
    assert backend.guarded_put(leader, token, out, b"by run 2", T, claim=(run, second))
    backend.revoke_lease(lease, T)


def test_resign_writes_its_extra_keys_in_the_same_transaction(backend: Backend, name: str) -> None:
    leader, handover, hist = f"/c/{name}/leader", f"/c/{name}/handover", f"/c/{name}/history/3"
    token, lease = lead(backend, leader)
    assert backend.resign(leader, token, handover, b"h", T, also_put={hist: b"last run"})
    (kv_h, _), (kv_x, _) = backend.get(handover, T), backend.get(hist, T)
    assert kv_h is not None and kv_x is not None and kv_h.mod_revision == kv_x.mod_revision
    assert backend.get(leader, T)[0] is None
    backend.revoke_lease(lease, T)


def test_get_prefix_returns_the_keys_under_it_in_order(backend: Backend, name: str) -> None:
    leader = f"/c/{name}/leader"
    token, lease = lead(backend, leader)
    for k in ("b", "a", "c"):
        assert backend.guarded_put(leader, token, f"/c/{name}/p/{k}", k.encode(), T)
    assert backend.guarded_put(leader, token, f"/c/{name}/q", b"outside", T)
    assert [kv.key for kv in backend.get_prefix(f"/c/{name}/p/", T)] == [f"/c/{name}/p/{k}" for k in "abc"]
    backend.revoke_lease(lease, T)


def test_claim_all_fences_every_job_and_is_all_or_nothing(backend: Backend, name: str) -> None:
    leader = f"/c/{name}/leader"
    token, _ = lead(backend, leader)
    runs = [f"/c/{name}/jobs/j{i}/run" for i in range(3)]
    first = backend.claim_all(leader, token, [(r, 0) for r in runs], {r: b"1" for r in runs}, T)
    assert first is not None
    found = backend.get_many([*runs, f"/c/{name}/absent"], T)
    assert sorted(found) == sorted(runs) and all(kv.mod_revision == first for kv in found.values())
    # One stale link refuses the whole transaction: nothing is written for the others either.
    stale = [(runs[0], first), (runs[1], 0), (runs[2], first)]
    assert backend.claim_all(leader, token, stale, {r: b"2" for r in runs}, T) is None
    assert all(kv.value == b"1" for kv in backend.get_many(runs, T).values())
    assert backend.claim_all(leader, token + 1, [(r, first) for r in runs], {r: b"3" for r in runs}, T) is None
    second = backend.claim_all(leader, token, [(r, first) for r in runs], {r: b"4" for r in runs}, T)
    assert second is not None and second > first


def test_get_many_reads_more_keys_than_one_transaction_holds(backend: Backend, name: str) -> None:
    leader = f"/c/{name}/leader"
    token, _ = lead(backend, leader)
    keys = [f"/c/{name}/k{i:03d}" for i in range(130)]
    for start in range(0, 130, 65):
        assert backend.claim_all(leader, token, [], {k: k.encode() for k in keys[start:start + 65]}, T) is not None
    found = backend.get_many(keys, T)
    assert len(found) == 130 and found[keys[129]].value == keys[129].encode()


def test_compare_and_put_writes_only_while_every_key_is_unchanged(backend: Backend, name: str) -> None:
    """Job control's writes (singleton pause/resume/skip-next/trigger): a compare-and-swap over mod revisions."""
    a, b = f"/c/{name}/control/a", f"/c/{name}/jobs/a/events/1"
    first = backend.compare_and_put([(a, 0)], {a: b"one", b: b"e1"}, T)  # 0: the key must be absent
    assert first is not None
    kv, _ = backend.get(a, T)
    assert kv is not None and kv.value == b"one" and kv.mod_revision == first
    assert backend.compare_and_put([(a, 0)], {a: b"stale"}, T) is None  # it exists now
    assert backend.compare_and_put([(a, first - 1)], {a: b"stale"}, T) is None
    second = backend.compare_and_put([(a, first)], {a: b"two"}, T)
    assert second is not None and second > first
    assert backend.get(a, T)[0].value == b"two" and backend.get(b, T)[0].value == b"e1"


def test_prefix_watch_sees_every_key_under_the_prefix_only(backend: Backend, name: str) -> None:
    base = f"/c/{name}/control"
    start = backend.compare_and_put([], {f"/c/{name}/other": b"x"}, T)
    assert start is not None
    backend.compare_and_put([], {base: b"legacy"}, T)
    backend.compare_and_put([], {f"{base}/job1": b"one"}, T)
    backend.compare_and_put([], {f"/c/{name}/run": b"not control"}, T)
    events = collect_prefix(backend, base, start + 1, 2)
    assert [(e.kv.key, e.kv.value) for e in events] == [(base, b"legacy"), (f"{base}/job1", b"one")]


def collect_prefix(backend: Backend, prefix: str, start: int, n: int, timeout_s: float = 5.0) -> list:
    stop, out = threading.Event(), []

    def run() -> None:
        for ev in backend.watch(prefix, start, stop, prefix=True):
            out.append(ev)
            if len(out) >= n:
                return

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(timeout_s)
    stop.set()
    t.join(2)
    return out


def test_a_lease_revoked_by_another_client_fences_its_holder(backend: Backend, name: str,
                                                            request: pytest.FixtureRequest) -> None:
    """Fast failover's safety: a standby revokes the lease of a leader it believes dead. Were that leader alive,
    its next claim, its guarded writes and its renewal are all refused."""
    key, run, data = f"/c/{name}/leader", f"/c/{name}/run", f"/c/{name}/data"
    other: Backend = backend if isinstance(backend, MemoryBackend) else \
        EtcdBackend(request.getfixturevalue("etcd").endpoints)
    lease = backend.grant_lease(10, T)
    token = backend.campaign(key, b"x", lease.lease_id, T).fencing_token
    claimed = backend.claim(key, token, (run, 0), {run: b"slot 1"}, T)
    assert claimed is not None
    other.revoke_lease(lease.lease_id, T)
    other.revoke_lease(lease.lease_id, T)  # a second standby doing the same: harmless
    assert backend.get(key, T)[0] is None
    assert backend.claim(key, token, (run, claimed), {run: b"slot 2"}, T) is None
    assert not backend.guarded_put(key, token, data, b"stale", T, claim=(run, claimed))
    assert backend.keep_alive_once(lease.lease_id, T) == 0
    if other is not backend:
        other.close()


def test_read_prefix_returns_the_keys_and_the_revision_a_watch_goes_on_from(backend: Backend, name: str) -> None:
    """Sharding's view: read a prefix, then watch from revision + 1, missing nothing in between."""
    prefix = f"/c/{name}/members/"
    assert backend.read_prefix(prefix, T)[0] == []
    for k in ("b", "a"):
        assert backend.compare_and_put([], {prefix + k: k.encode()}, T) is not None
    last = backend.compare_and_put([], {f"/c/{name}/membersX": b"outside"}, T)
    kvs, revision = backend.read_prefix(prefix, T)
    assert [(kv.key, kv.value) for kv in kvs] == [(prefix + "a", b"a"), (prefix + "b", b"b")]
    assert revision == last  # the store's revision, not the newest key's under the prefix
    assert kvs == backend.get_prefix(prefix, T)
    after = backend.compare_and_put([], {prefix + "c": b"c"}, T)
    events = collect_prefix(backend, prefix, revision + 1, 1)
    assert [(e.kv.key, e.revision) for e in events] == [(prefix + "c", after)]


def test_put_leased_overwrites_under_the_lease_and_goes_with_it(backend: Backend, name: str) -> None:
    key = f"/c/{name}/members/r1"
    lease = backend.grant_lease(10, T)
    first = backend.put_leased(key, b"one", lease.lease_id, T)
    kv, _ = backend.get(key, T)
    assert kv is not None and kv.value == b"one" and kv.lease_id == lease.lease_id and kv.mod_revision == first
    second = backend.put_leased(key, b"two", lease.lease_id, T)  # whatever it held before
    kv, _ = backend.get(key, T)
    assert second > first and kv is not None and kv.value == b"two" and kv.create_revision == first
    other = backend.grant_lease(10, T)
    backend.put_leased(key, b"three", other.lease_id, T)  # moves to another lease: the first no longer holds it
    backend.revoke_lease(lease.lease_id, T)
    kv, _ = backend.get(key, T)
    assert kv is not None and kv.value == b"three" and kv.lease_id == other.lease_id
    backend.revoke_lease(other.lease_id, T)
    assert backend.get(key, T)[0] is None
    for lease_id in (other.lease_id, 0x7EADBEEF5EED):  # revoked; never granted
        with pytest.raises(LeaseNotFound):
            backend.put_leased(key, b"x", lease_id, T)
    assert backend.get(key, T)[0] is None
