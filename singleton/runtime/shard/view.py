"""Sharding's view of the cluster: the live members and who leads each group, read once and then followed by two
watches (`<prefix>/<name>/members/` and `<prefix>/<name>/groups/`). No polling: a change wakes whoever waits.

A member's crash removes its member record and every group key it held at one revision (they share its lease); the
two watches may bring those events in either order, so a vacancy remembers the lease of the leader that vanished,
and placement leaves out the members on that lease.
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

from singleton.backends.abc import Backend, KeyValue
from singleton.core.clock import Clock
from singleton.core.config import Config
from singleton.core.errors import BackendError, WatchCompacted
from singleton.core.records import Handover, decode_handover
from singleton.v1.leader_pb2 import MemberRecord

log = logging.getLogger("singleton")


@dataclass(frozen=True)
class Member:
    replica_id: str
    lease_id: int
    groups: frozenset[str]


@dataclass(frozen=True)
class Vacancy:
    revision: int  # of the delete (0: found vacant at the first read)
    seen_at: float  # monotonic
    handover: Handover | None  # written in the same transaction as the delete (a graceful handover)
    dead_lease: int  # the lease of the leader that vanished (0: unknown)


def _member(kv: KeyValue) -> Member | None:
    try:
        record = MemberRecord.FromString(kv.value)
    except Exception:  # noqa: BLE001 - someone else's value under our prefix: not a member
        return None
    return Member(record.replica_id or kv.key.rsplit("/", 1)[-1], kv.lease_id, frozenset(record.groups))


class ShardView:
    def __init__(self, config: Config, backend: Backend, clock: Clock, stop: threading.Event,
                 on_group_change: Callable[[str, KeyValue | None, int], None],
                 on_resign: Callable[[str, bytes, int], None] = lambda group, value, revision: None) -> None:
        self.config, self.backend, self.clock = config, backend, clock
        self._stop = stop
        # (group, its leader key or None, the revision it is as of): from a watch thread, must not block
        self._on_group_change = on_group_change
        self._on_resign = on_resign  # (group, value, revision): `singleton resign --group` wrote a token
        self._cond = threading.Condition()
        self.version = 0
        self.members: dict[str, Member] = {}
        self.leaders: dict[str, KeyValue] = {}
        self.vacancies: dict[str, Vacancy] = {}
        self._handovers: dict[str, KeyValue] = {}
        self.loaded = threading.Event()
        self._loaded_prefixes: set[str] = set()

    # --- reading ------------------------------------------------------------------------------------
    def snapshot(self) -> tuple[int, dict[str, Member], dict[str, KeyValue], dict[str, Vacancy]]:
        with self._cond:
            return self.version, dict(self.members), dict(self.leaders), dict(self.vacancies)

    def wait_change(self, version: int, timeout_s: float | None) -> int:
        with self._cond:
            if self.version == version:
                self._cond.wait(timeout_s)
            return self.version

    def poke(self) -> None:
        """Something outside the view changed (the member lease, a term ended): wake the waiters."""
        with self._cond:
            self.version += 1
            self._cond.notify_all()

    # --- following ----------------------------------------------------------------------------------
    def start(self) -> ShardView:
        for prefix, apply in ((self.config.members_prefix, self._apply_member),
                              (self.config.groups_prefix, self._apply_group)):
            threading.Thread(target=self._follow, args=(prefix, apply), daemon=True,
                             name=f"singleton-view-{prefix.rstrip('/').rsplit('/', 1)[-1]}").start()
        return self

    def _follow(self, prefix: str, apply: Callable[[KeyValue, bool, int, bool], None]) -> None:
        first = True
        while not self._stop.is_set():
            try:
                kvs, revision = self.backend.read_prefix(prefix, self.config.call_timeout_s)
            except BackendError as err:
                log.info("shard view: could not read %s: %s", prefix, err)
                self._stop.wait(0.5)
                continue
            with self._cond:
                self._reset(prefix, kvs, revision)
            if first:
                first = False
                self._mark_loaded(prefix)
            try:
                for event in self.backend.watch(prefix, revision + 1, self._stop, prefix=True):
                    apply(event.kv, event.deleted, event.revision, False)
                return
            except WatchCompacted as err:
                log.info("shard view: watch on %s compacted, reading again: %s", prefix, err)
            except BackendError as err:
                log.info("shard view: watch on %s broke, reading again: %s", prefix, err)
                self._stop.wait(0.5)

    def _mark_loaded(self, prefix: str) -> None:
        with self._cond:
            self._loaded_prefixes.add(prefix)
            if len(self._loaded_prefixes) == 2:
                self.loaded.set()
            self.version += 1
            self._cond.notify_all()

    def _reset(self, prefix: str, kvs: list[KeyValue], revision: int) -> None:
        """A fresh read replaces what the lost history would have said (called under the lock)."""
        now = self.clock.monotonic()
        if prefix == self.config.members_prefix:
            self.members = {m.replica_id: m for m in map(_member, kvs) if m is not None}
        else:
            before = self.leaders
            self.leaders, self._handovers = {}, {}
            for kv in kvs:
                group, _, leaf = kv.key[len(prefix):].rpartition("/")
                if leaf == "leader":
                    self.leaders[group] = kv
                elif leaf == "handover":
                    self._handovers[group] = kv
            for group, kv in before.items():
                if group not in self.leaders:
                    self.vacancies[group] = Vacancy(0, now, None, kv.lease_id)
                    self._on_group_change(group, None, revision)
            for group, kv in self.leaders.items():  # replaced while the history was lost: the term judges
                self._on_group_change(group, kv, revision)
        self.version += 1
        self._cond.notify_all()

    def _apply_member(self, kv: KeyValue, deleted: bool, revision: int, _: bool) -> None:
        replica_id = kv.key[len(self.config.members_prefix):]
        with self._cond:
            member = None if deleted else _member(kv)
            if member is None:
                self.members.pop(replica_id, None)
            else:
                self.members[member.replica_id] = member
            self.version += 1
            self._cond.notify_all()

    def _apply_group(self, kv: KeyValue, deleted: bool, revision: int, _: bool) -> None:
        group, _sep, leaf = kv.key[len(self.config.groups_prefix):].rpartition("/")
        if leaf == "handover" and not deleted:
            with self._cond:
                self._handovers[group] = kv
            return
        if leaf == "resign" and not deleted:
            self._on_resign(group, kv.value, revision)
            return
        if leaf != "leader":
            return
        with self._cond:
            if deleted:
                gone = self.leaders.pop(group, None)
                handover_kv = self._handovers.get(group)
                handover = decode_handover(handover_kv.value) if handover_kv is not None and \
                    handover_kv.mod_revision == revision else None
                self.vacancies[group] = Vacancy(revision, self.clock.monotonic(), handover,
                                                gone.lease_id if gone is not None else 0)
            else:
                self.leaders[group] = kv
                self.vacancies.pop(group, None)
            self.version += 1
            self._cond.notify_all()
        self._on_group_change(group, None if deleted else kv, revision)
