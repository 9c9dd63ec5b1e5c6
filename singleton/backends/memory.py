"""An in-memory Backend with etcd's semantics (revisions, leases, create_revision CAS, watch from a revision).

For unit tests and for embedding in tests of users' own code. Time comes from the clock passed in, so
tests can expire leases by moving a FakeClock. `hang()` makes every call run into its deadline, as a
member cut off behind a black-holing network would.
"""
from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from singleton.backends.abc import Backend, CampaignResult, KeyValue, Lease, WatchEvent
from singleton.core.clock import Clock, SystemClock
from singleton.core.errors import BackendTimeout, BackendUnavailable, WatchCompacted


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

    # --- fault injection, for tests -------------------------------------------------------------
    def hang(self) -> None:
        self._hung = True

    def go_down(self) -> None:
        self._down = True

    def heal(self) -> None:
        self._hung = self._down = False

    def compact(self) -> None:
        with self._cond:
            self._compacted = self._revision
            self._history.clear()

    def live_lease_ids(self) -> list[int]:
        with self._cond:
            self._expire_locked()
            return sorted(self._leases)

    # --- helpers ---------------------------------------------------------------------------------
    def _enter(self, timeout_s: float) -> None:
        if self._down:
            raise BackendUnavailable("memory backend is down")
        if self._hung:
            threading.Event().wait(timeout_s)
            raise BackendTimeout(f"memory backend hung: no answer within {timeout_s:g} s")
        self.last_ok_at = time.monotonic()

    def _expire_locked(self) -> None:
        now = self._clock.monotonic()
        for lease_id in [i for i, lease in self._leases.items() if lease.expires_at <= now]:
            self._revoke_locked(lease_id)

    def _revoke_locked(self, lease_id: int) -> None:
        lease = self._leases.pop(lease_id, None)
        for key in sorted(lease.keys if lease else ()):
            self._delete_locked(key)

    def _delete_locked(self, key: str, bump: bool = True) -> None:
        kv = self._kv.pop(key, None)
        if kv is None:
            return
        if kv.lease_id in self._leases:
            self._leases[kv.lease_id].keys.discard(key)
        self._revision += bump
        self._history.append(WatchEvent(True, self._revision, KeyValue(key, b"", 0, self._revision)))
        self._cond.notify_all()

    def _put_locked(self, key: str, value: bytes, lease_id: int = 0) -> None:
        old = self._kv.get(key)
        if old is not None and old.lease_id in self._leases:
            self._leases[old.lease_id].keys.discard(key)
        self._revision += 1
        create = old.create_revision if old else self._revision
        kv = KeyValue(key, value, create, self._revision, lease_id)
        self._kv[key] = kv
        if lease_id:
            self._leases[lease_id].keys.add(key)
        self._history.append(WatchEvent(False, self._revision, kv))
        self._cond.notify_all()

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
            won = key not in self._kv
            if won:
                if lease_id not in self._leases:
                    raise BackendUnavailable(f"lease {lease_id:x} not found")
                self._put_locked(key, value, lease_id)
            extra = {k: self._kv[k] for k in also_read if k in self._kv}
            return CampaignResult(won, self._revision, self._kv.get(key), extra)

    def get(self, key: str, timeout_s: float) -> tuple[KeyValue | None, int]:
        self._enter(timeout_s)
        with self._cond:
            self._expire_locked()
            return self._kv.get(key), self._revision

    def _leads(self, leader_key: str, fencing_token: int) -> bool:
        kv = self._kv.get(leader_key)
        return kv is not None and kv.create_revision == fencing_token

    def guarded_put(self, leader_key: str, fencing_token: int, key: str, value: bytes, timeout_s: float) -> bool:
        self._enter(timeout_s)
        with self._cond:
            self._expire_locked()
            if not self._leads(leader_key, fencing_token):
                return False
            self._put_locked(key, value)
            return True

    def guarded_delete(self, leader_key: str, fencing_token: int, key: str, timeout_s: float) -> bool:
        self._enter(timeout_s)
        with self._cond:
            self._expire_locked()
            if not self._leads(leader_key, fencing_token):
                return False
            self._delete_locked(key)
            return True

    def resign(self, leader_key: str, fencing_token: int, handover_key: str, handover: bytes,
               timeout_s: float) -> bool:
        self._enter(timeout_s)
        with self._cond:
            self._expire_locked()
            if not self._leads(leader_key, fencing_token):
                return False
            # One transaction, one revision, as in etcd: the delete and the handover share it.
            self._put_locked(handover_key, handover)
            self._delete_locked(leader_key, bump=False)
            return True

    def watch(self, key: str, start_revision: int, stop: threading.Event) -> Iterator[WatchEvent]:
        next_revision = start_revision
        while not stop.is_set():
            with self._cond:
                self._expire_locked()
                if next_revision <= self._compacted:
                    raise WatchCompacted(f"revision {next_revision} is compacted (at {self._compacted})")
                ready = [e for e in self._history if e.revision >= next_revision and e.kv.key == key]
                if not ready:
                    # Short waits so leases expire on time and `stop` is noticed.
                    self._cond.wait(0.02)
                    if not (self._hung or self._down):
                        self.last_ok_at = time.monotonic()
                    continue
            for event in ready:
                next_revision = event.revision + 1
                yield event

    def close(self) -> None:
        pass
