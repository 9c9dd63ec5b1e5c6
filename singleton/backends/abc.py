"""The coordination backend interface (one file, as APScheduler 4's abc.py), and the values it deals in.

`MemoryBackend` (in memory.py) and `EtcdBackend` (in the etcd package) implement it; one test suite runs
against both. Every method takes its own deadline; a backend call never blocks past it.
"""
from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class KeyValue:
    key: str
    value: bytes
    create_revision: int
    mod_revision: int
    lease_id: int = 0


@dataclass(frozen=True)
class Lease:
    lease_id: int
    ttl_s: float


@dataclass(frozen=True)
class CampaignResult:
    won: bool
    revision: int  # the store's revision when the campaign was decided: watch from revision + 1
    leader: KeyValue | None  # the leader key as it stands (ours when won); None only if it vanished meanwhile
    extra: dict[str, KeyValue]  # the `also_read` keys that exist, read in the same transaction

    @property
    def fencing_token(self) -> int:
        return self.leader.create_revision if self.leader else 0


def campaign_won(succeeded: bool, leader: KeyValue | None, lease_id: int) -> bool:
    """A campaign is won when its put applied, or when a retried campaign (whose first try applied but
    whose answer was lost) finds the key held under its own lease."""
    return succeeded or (lease_id != 0 and leader is not None and leader.lease_id == lease_id)


@dataclass(frozen=True)
class WatchEvent:
    deleted: bool
    revision: int
    kv: KeyValue  # for a delete: key and revision only


Claim = tuple[str, int]  # (run-record key, the mod revision it must still have): a run's claim, for fencing


class Backend(ABC):
    # Monotonic time of the last answer from the store (any call, or a watch message): for readiness.
    # EtcdBackend uses time.monotonic(); MemoryBackend its injected clock's monotonic().
    last_ok_at: float = float("-inf")

    @abstractmethod
    def grant_lease(self, ttl_s: int, timeout_s: float) -> Lease: ...

    @abstractmethod
    def keep_alive_once(self, lease_id: int, timeout_s: float) -> float:
        """Renew once; returns the granted TTL, 0 when the lease no longer exists."""

    @abstractmethod
    def revoke_lease(self, lease_id: int, timeout_s: float) -> None:
        """Revoke; deletes every key attached. A lease that is already gone is not an error."""

    @abstractmethod
    def lease_remaining_s(self, lease_id: int, timeout_s: float) -> float:
        """Seconds left on the lease as etcd sees it; -1 when it no longer exists. For reporting only."""

    @abstractmethod
    def campaign(self, key: str, value: bytes, lease_id: int, timeout_s: float,
                 also_read: tuple[str, ...] = ()) -> CampaignResult:
        """One transaction: if `key` does not exist (create_revision == 0), put it under the lease.

        Won also when the key already holds our own lease (see `campaign_won`). Raises LeaseNotFound
        when the put would run with a lease that does not exist (revoked, expired, never granted)."""

    @abstractmethod
    def get(self, key: str, timeout_s: float) -> tuple[KeyValue | None, int]:
        """The key (or None) and the store revision it was read at."""

    @abstractmethod
    def get_prefix(self, prefix: str, timeout_s: float) -> list[KeyValue]:
        """Every key under `prefix`, in key order."""

    @abstractmethod
    def read_prefix(self, prefix: str, timeout_s: float) -> tuple[list[KeyValue], int]:
        """`get_prefix` and the store revision it was read at (a watch from revision + 1 misses nothing)."""

    @abstractmethod
    def put_leased(self, key: str, value: bytes, lease_id: int, timeout_s: float) -> int:
        """Put `key` under the lease, whatever it held before (sharding's member record); returns the revision.
        Raises LeaseNotFound when the lease does not exist."""

    @abstractmethod
    def get_many(self, keys: Sequence[str], timeout_s: float) -> dict[str, KeyValue]:
        """The keys that exist among `keys` (one consistent read per chunk of 100)."""

    @abstractmethod
    def claim(self, leader_key: str, fencing_token: int, claim: Claim, puts: dict[str, bytes],
              timeout_s: float) -> int | None:
        """One transaction: while `leader_key` has create_revision == fencing_token *and* the claim key still has
        the given mod revision (0: absent), put `puts` (no lease). Returns the transaction's revision (the new
        mod revision of every key written), or None when refused."""

    @abstractmethod
    def claim_all(self, leader_key: str, fencing_token: int, claims: list[Claim], puts: dict[str, bytes],
                  timeout_s: float) -> int | None:
        """`claim` for several jobs at once: one transaction that puts `puts` only while `leader_key` has
        create_revision == fencing_token *and* every claim key still has its mod revision. All or nothing."""

    @abstractmethod
    def guarded_put(self, leader_key: str, fencing_token: int, key: str, value: bytes, timeout_s: float,
                    claim: Claim | None = None) -> bool:
        """Put only while `leader_key` still has create_revision == fencing_token. False when refused."""

    @abstractmethod
    def guarded_delete(self, leader_key: str, fencing_token: int, key: str, timeout_s: float,
                       claim: Claim | None = None) -> bool: ...

    @abstractmethod
    def resign(self, leader_key: str, fencing_token: int, handover_key: str, handover: bytes,
               timeout_s: float, also_put: dict[str, bytes] | None = None) -> bool:
        """One transaction: while we still lead, write the handover record (and `also_put`), delete the leader key."""

    @abstractmethod
    def compare_and_put(self, compares: list[Claim], puts: dict[str, bytes], timeout_s: float) -> int | None:
        """One transaction: put `puts` (no lease) only while every compared key still has its mod revision (0:
        absent). Returns the transaction's revision, or None when refused. For operators' writes (job control)."""

    @abstractmethod
    def watch(self, key: str, start_revision: int, stop: threading.Event,
              prefix: bool = False) -> Iterator[WatchEvent]:
        """Events on `key` (with `prefix`: on every key starting with it) from `start_revision` on, until `stop` is set.

        Survives the loss of the member it is attached to: it restarts elsewhere from the last
        revision it delivered, so no event is lost. Raises WatchCompacted when that history is gone.
        """

    @abstractmethod
    def close(self) -> None: ...
