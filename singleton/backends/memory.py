"""An in-memory Backend with etcd's semantics (revisions, leases, create_revision CAS, watch from a revision).

For unit tests and for embedding in tests of users' own code. Time comes from the clock passed in, so
tests can expire leases by moving a FakeClock. `hang()` makes every call run into its deadline, as a
member cut off behind a black-holing network would.
"""
from __future__ import annotations

import itertools
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from singleton.backends.abc import Backend, CampaignResult, Claim, KeyValue, Lease, WatchEvent, campaign_won
from singleton.core.clock import Clock, SystemClock
from singleton.core.errors import BackendError, BackendTimeout, BackendUnavailable, LeaseNotFound, WatchCompacted

# One operation of a transaction: (key, value, lease_id) puts; a value of None deletes.
_Op = tuple[str, bytes | None, int]


@dataclass
class _Lease:
    ttl_s: float
    expires_at: float
    keys: set[str] = field(default_factory=set)


class MemoryBackend(Backend):
    def __init__(self, clock: Clock | None = None) -> None:
        self._clock = clock or SystemClock()
        self._cond = threading.Condition()
        self._revision = 1
        self._kv: dict[str, KeyValue] = {}
        self._leases: dict[int, _Lease] = {}
        self._lease_ids = itertools.count(0x1000)
        self._history: list[WatchEvent] = []
        self._compacted = 0
        self._hung = False
        self._down = False

    # --- fault injection and maintenance, for tests -----------------------------------------------
    def hang(self) -> None:
        self._hung = True

    def go_down(self) -> None:
        self._down = True

    def heal(self) -> None:
        self._hung = self._down = False

    def compact(self, revision: int, timeout_s: float = 1.0) -> None:
        """Drop the history before `revision`, as etcd's Compact does: a watch may still start at
        `revision` (and sees a put made at exactly it), not below it."""
        self._enter(timeout_s)
        with self._cond:
            if revision > self._revision:
                raise BackendError(f"compact at {revision}: required revision is a future revision")
            if revision <= self._compacted:
                raise WatchCompacted(f"compact at {revision}: already compacted at {self._compacted}")
            self._compacted = revision
            # etcd keeps each key's version at the compaction revision, but not a deletion's tombstone.
            self._history = [e for e in self._history
                             if e.revision > revision or (e.revision == revision and not e.deleted)]

    def live_lease_ids(self) -> list[int]:
        with self._cond:
            self._expire_locked()
            return sorted(self._leases)

    # --- helpers ---------------------------------------------------------------------------------
    def _enter(self, timeout_s: float) -> None:
        if self._down:
            raise BackendUnavailable("memory backend is down")
        if self._hung:
            # Real time on purpose: a hung call blocks its caller for the deadline, and a FakeClock
            # only moves when the test moves it, so waiting on it could block forever.
            threading.Event().wait(timeout_s)
            raise BackendTimeout(f"memory backend hung: no answer within {timeout_s:g} s")
        self.last_ok_at = self._clock.monotonic()

    def _expire_locked(self) -> None:
        now = self._clock.monotonic()
        for lease_id in [i for i, lease in self._leases.items() if lease.expires_at <= now]:
            self._revoke_locked(lease_id)

    def _revoke_locked(self, lease_id: int) -> None:
        lease = self._leases.pop(lease_id, None)
        if lease is not None:
            self._commit_locked([(key, None, 0) for key in sorted(lease.keys)])  # one revision, as etcd

    def _commit_locked(self, ops: Sequence[_Op]) -> None:
        """Apply one transaction as etcd does: all its changes share one new revision, and a
        transaction that changes nothing (deleting absent keys) takes no revision."""
        for key, value, lease_id in ops:
            if value is not None and lease_id and lease_id not in self._leases:
                raise LeaseNotFound(f"put {key}: lease {lease_id:x} not found")  # before any change
        revision = self._revision + 1
        changed = False
        for key, value, lease_id in ops:
            old = self._kv.pop(key, None)
            if old is not None and old.lease_id in self._leases:
                self._leases[old.lease_id].keys.discard(key)
            if value is None:
                if old is not None:
                    changed = True
                    self._history.append(WatchEvent(True, revision, KeyValue(key, b"", 0, revision)))
                continue
            changed = True
            kv = KeyValue(key, value, old.create_revision if old else revision, revision, lease_id)
            self._kv[key] = kv
            if lease_id:
                self._leases[lease_id].keys.add(key)
            self._history.append(WatchEvent(False, revision, kv))
        if changed:
            self._revision = revision
            self._cond.notify_all()

    def _guarded(self, leader_key: str, fencing_token: int, ops: Sequence[_Op], timeout_s: float,
                 claim: Claim | None = None, claims: Sequence[Claim] = ()) -> int | None:
        """One transaction: `ops` only while `leader_key` still has create_revision == fencing_token (and the
        claim key its mod revision). Returns the store's revision after it, or None when refused."""
        self._enter(timeout_s)
        with self._cond:
            self._expire_locked()
            leader = self._kv.get(leader_key)
            if (leader.create_revision if leader else 0) != fencing_token:  # etcd: an absent key's is 0
                return None
            for key, revision in ([claim] if claim is not None else []) + list(claims):
                held = self._kv.get(key)
                if (held.mod_revision if held else 0) != revision:
                    return None
            self._commit_locked(ops)
            return self._revision

    # --- Backend ---------------------------------------------------------------------------------
    def grant_lease(self, ttl_s: int, timeout_s: float) -> Lease:
        self._enter(timeout_s)
        with self._cond:
            lease_id = next(self._lease_ids)
            self._leases[lease_id] = _Lease(float(ttl_s), self._clock.monotonic() + ttl_s)
            return Lease(lease_id, float(ttl_s))

    def keep_alive_once(self, lease_id: int, timeout_s: float) -> float:
        self._enter(timeout_s)
        with self._cond:
            self._expire_locked()
            lease = self._leases.get(lease_id)
            if lease is None:
                return 0.0
            lease.expires_at = self._clock.monotonic() + lease.ttl_s
            return lease.ttl_s

    def lease_remaining_s(self, lease_id: int, timeout_s: float) -> float:
        self._enter(timeout_s)
        with self._cond:
            self._expire_locked()
            lease = self._leases.get(lease_id)
            return -1.0 if lease is None else lease.expires_at - self._clock.monotonic()

    def revoke_lease(self, lease_id: int, timeout_s: float) -> None:
        self._enter(timeout_s)
        with self._cond:
            self._revoke_locked(lease_id)

    def campaign(self, key: str, value: bytes, lease_id: int, timeout_s: float,
                 also_read: tuple[str, ...] = ()) -> CampaignResult:
        self._enter(timeout_s)
        with self._cond:
            self._expire_locked()
            succeeded = key not in self._kv
            if succeeded:
                self._commit_locked([(key, value, lease_id)])  # LeaseNotFound for a gone lease, as etcd
            leader = self._kv.get(key)
            extra = {k: self._kv[k] for k in also_read if k in self._kv}
            return CampaignResult(campaign_won(succeeded, leader, lease_id), self._revision, leader, extra)

    def get(self, key: str, timeout_s: float) -> tuple[KeyValue | None, int]:
        self._enter(timeout_s)
        with self._cond:
            self._expire_locked()
            return self._kv.get(key), self._revision

    def get_prefix(self, prefix: str, timeout_s: float) -> list[KeyValue]:
        return self.read_prefix(prefix, timeout_s)[0]

    def read_prefix(self, prefix: str, timeout_s: float) -> tuple[list[KeyValue], int]:
        self._enter(timeout_s)
        with self._cond:
            self._expire_locked()
            return [self._kv[k] for k in sorted(self._kv) if k.startswith(prefix)], self._revision

    def put_leased(self, key: str, value: bytes, lease_id: int, timeout_s: float) -> int:
        self._enter(timeout_s)
        with self._cond:
            self._expire_locked()
            self._commit_locked([(key, value, lease_id)])  # LeaseNotFound for a gone lease, as etcd
            return self._revision

    def claim(self, leader_key: str, fencing_token: int, claim: Claim, puts: dict[str, bytes],
              timeout_s: float) -> int | None:
        return self._guarded(leader_key, fencing_token, [(k, v, 0) for k, v in puts.items()], timeout_s, claim)

    def claim_all(self, leader_key: str, fencing_token: int, claims: list[Claim], puts: dict[str, bytes],
                  timeout_s: float) -> int | None:
        return self._guarded(leader_key, fencing_token, [(k, v, 0) for k, v in puts.items()], timeout_s,
                             claims=claims)

    def get_many(self, keys: Sequence[str], timeout_s: float) -> dict[str, KeyValue]:
        self._enter(timeout_s)
        with self._cond:
            self._expire_locked()
            return {k: self._kv[k] for k in keys if k in self._kv}

    def guarded_put(self, leader_key: str, fencing_token: int, key: str, value: bytes, timeout_s: float,
                    claim: Claim | None = None) -> bool:
        return self._guarded(leader_key, fencing_token, [(key, value, 0)], timeout_s, claim) is not None

    def guarded_delete(self, leader_key: str, fencing_token: int, key: str, timeout_s: float,
                       claim: Claim | None = None) -> bool:
        return self._guarded(leader_key, fencing_token, [(key, None, 0)], timeout_s, claim) is not None

    def resign(self, leader_key: str, fencing_token: int, handover_key: str, handover: bytes,
               timeout_s: float, also_put: dict[str, bytes] | None = None) -> bool:
        ops: list[_Op] = [(k, v, 0) for k, v in (also_put or {}).items()]
        ops += [(handover_key, handover, 0), (leader_key, None, 0)]
        return self._guarded(leader_key, fencing_token, ops, timeout_s) is not None

    def compare_and_put(self, compares: list[Claim], puts: dict[str, bytes], timeout_s: float) -> int | None:
        self._enter(timeout_s)
        with self._cond:
            self._expire_locked()
            for key, revision in compares:
                held = self._kv.get(key)
                if (held.mod_revision if held else 0) != revision:
                    return None
            self._commit_locked([(k, v, 0) for k, v in puts.items()])
            return self._revision

    def watch(self, key: str, start_revision: int, stop: threading.Event,
              prefix: bool = False) -> Iterator[WatchEvent]:
        next_revision = start_revision
        while not stop.is_set():
            with self._cond:
                self._expire_locked()
                if next_revision < self._compacted:  # etcd: the compaction revision itself is still there
                    raise WatchCompacted(f"revision {next_revision} is compacted (at {self._compacted})")
                ready = [e for e in self._history if e.revision >= next_revision
                         and (e.kv.key.startswith(key) if prefix else e.kv.key == key)]
                if not ready:
                    # Short waits so leases expire on time and `stop` is noticed.
                    self._cond.wait(0.02)
                    if not (self._hung or self._down):
                        self.last_ok_at = self._clock.monotonic()
                    continue
            for event in ready:
                next_revision = event.revision + 1
                yield event

    def close(self) -> None:
        pass
