"""Sharding (`Config(shard=True)`, `--shard`): the replica stands for every group it runs, on one lease.

One coordinator thread decides, from the view (runtime/shard/view.py) and core.placement, which vacant groups to
campaign for now (the preferred owner, or a handover's named successor, at once; the others after their delay) and
which led group to hand to a member now preferred for it (graceful, one per rebalance_interval_s). Each won group
runs its own term on its own thread (runtime/shard/term.py); the member lease (runtime/shard/member.py) backs them
all. No thread per standing-by group: a replica that can lead 500 groups and leads 10 runs 10 term threads.
"""
from __future__ import annotations

import logging
import math
import random
import threading
from typing import TYPE_CHECKING

import tenacity

from singleton.backends.abc import KeyValue
from singleton.core.election import Election
from singleton.core.errors import BackendError, LeaseNotFound
from singleton.core.lease import LeaseKeeper, StepDownReason
from singleton.core.placement import RebalancePacer, campaign_delay_s, groups_to_move, placement, successor_for
from singleton.core.records import decode_handover, leader_record
from singleton.runtime.leadership import Leadership
from singleton.runtime.shard.member import GroupKeeper, MemberLease, backoff_s
from singleton.runtime.shard.term import GroupTerm, wake_all
from singleton.runtime.shard.view import Member, ShardView, Vacancy

if TYPE_CHECKING:
    from singleton.runtime.runner import Singleton

log = logging.getLogger("singleton")

RESIGN_HOLD_S = 30.0  # a member that resigned a group does not take it back (nor is handed it) for this long
_IDLE_WAIT_S = 5.0  # the coordinator's longest sleep when nothing is due (a change wakes it at once)


class ShardedRun:
    def __init__(self, app: Singleton) -> None:
        self.app, self.config = app, app.config
        self.stopping = app._stop
        self.groups = app._registry.groups()  # group -> its jobs
        self.terms: dict[str, GroupTerm] = {}
        self._lapsing: dict[str, GroupTerm] = {}  # ended with a job that ignored its cancel: the key stays
        self._withdrawn: dict[str, float] = {}  # group -> monotonic time until which we do not lead it
        self._retry_at: dict[str, float] = {}
        self._attempts: dict[str, int] = {}
        self._lock = threading.Lock()
        self._pacer = RebalancePacer(self.config.rebalance_interval_s)
        self._wait = tenacity.wait_exponential_jitter(multiplier=0.1, max=self.config.campaign_backoff_max_s,
                                                      jitter=0.2)
        self.view = ShardView(self.config, app.backend, app.clock, self.stopping, self._group_changed,
                              self._resign_asked)
        self.member = MemberLease(self.config, app.backend, app.clock, list(self.groups), self.stopping,
                                  self._lease_changed, self._terms_on)
        self._loaded_at = 0.0
        self._registered = list(self.groups)  # what our member record offers
        self._placed_lock = threading.Lock()
        self._placed: dict[frozenset[tuple[str, frozenset[str]]], dict[str, str]] = {}  # a few member sets' placements

    # --- what other parts read ----------------------------------------------------------------------
    def leadership_for(self, job: str) -> Leadership | None:
        with self._lock:
            for term in self.terms.values():
                if term.leadership is not None and job in self.groups.get(term.group, ()):
                    return term.leadership
        return None

    def led_groups(self) -> dict[str, int]:
        """Group -> fencing token, for the groups this replica leads now."""
        with self._lock:
            return {g: t.token for g, t in self.terms.items()}

    def successor(self, group: str) -> str:
        """Whom a handover of `group` names: its preferred owner once we offer what we offer now (a resign or a stop
        withdrew it first, so everyone computes that same owner), else among the other live members."""
        me = self.config.replica_id
        _, members, _, _ = self.view.snapshot()
        placed = {m: v.groups for m, v in members.items()}
        placed[me] = frozenset() if self.stopping.is_set() else frozenset(self._offered(self.app.clock.monotonic()))
        owner = self._placement(placed).get(group)
        if owner is not None and owner != me:
            return owner
        return successor_for(group, me, placed) or ""

    def changed(self) -> None:
        self.app._changed()

    def withdraw(self, *groups: str) -> None:
        """Stop offering these groups for RESIGN_HOLD_S (a resign), so placement names other members for them."""
        with self._lock:
            for group in groups:
                self._withdrawn[group] = self.app.clock.monotonic() + RESIGN_HOLD_S
        self._registered = self._offered(self.app.clock.monotonic())
        self.member.set_groups(self._registered)

    def _resign_all_if_asked(self) -> None:
        """Singleton.resign() with sharding: hand over every group this replica leads (and withdraw from them)."""
        if not self.app._resign.is_set():
            return
        self.app._resign.clear()
        with self._lock:
            terms = list(self.terms.values())
        self.withdraw(*(t.group for t in terms if self.successor(t.group)))  # the only one able to: not withdrawn
        for term in terms:
            term.request_resign()

    def term_ended(self, term: GroupTerm) -> None:
        with self._lock:
            if self.terms.get(term.group) is term:
                del self.terms[term.group]
            if term.outcome is not None and term.outcome.job_left_running:
                self._lapsing[term.group] = term
        self.view.poke()
        self.changed()

    # --- callbacks from the view and the member lease (other threads: never block) -------------------
    def _group_changed(self, group: str, kv: KeyValue | None, revision: int) -> None:
        with self._lock:
            term = self.terms.get(group)
        # An event from before our win (the view lags) says nothing about our term.
        if term is not None and revision > term.won_revision and (kv is None or kv.create_revision != term.token):
            term.lost()

    def _resign_asked(self, group: str, value: bytes, revision: int) -> None:
        """`singleton resign --group G` writes G's leader's token to G's resign key (one watch for every group)."""
        with self._lock:
            term = self.terms.get(group)
        if term is not None and revision > term.won_revision and value == str(term.token).encode():
            log.info("group %s: resign requested through etcd", group)
            threading.Thread(target=term.resign_from_etcd, daemon=True, name="singleton-resign").start()

    def _lease_changed(self) -> None:
        with self._lock:
            terms = list(self.terms.values())
        wake_all(terms)
        self.view.poke()

    def _terms_on(self, lease_id: int) -> tuple[int, int]:
        """(terms running, terms ended with a job still running that ignored its cancel) on this lease."""
        self._prune_lapsing()
        with self._lock:
            return (sum(1 for t in self.terms.values() if t.lease_id == lease_id),
                    sum(1 for t in self._lapsing.values() if t.lease_id == lease_id))

    def _prune_lapsing(self) -> None:
        with self._lock:
            for group, term in list(self._lapsing.items()):
                if term.leadership is None or not term.leadership.jobs.busy():
                    del self._lapsing[group]

    # --- the coordinator ------------------------------------------------------------------------------
    def run(self) -> None:
        clock = self.app.clock
        self.view.start()
        self.member.start()
        while not self.view.loaded.wait(0.5):  # both reads retry until etcd answers
            if self.stopping.is_set():
                break
        self._loaded_at = clock.monotonic()
        version = -1
        wait_s: float | None = 0.0
        try:
            while not self.stopping.is_set():
                version = self.view.wait_change(version, wait_s)
                if self.stopping.is_set():
                    break
                try:
                    wait_s = self._step(clock.monotonic())
                except Exception:  # noqa: BLE001 - the coordinator must outlive any one bad step; logged
                    log.exception("sharding: the coordinator's step failed; trying again in a second")
                    wait_s = 1.0
        finally:
            self._shut_down()

    def _placement(self, members: dict[str, frozenset[str]]) -> dict[str, str]:
        """core.placement.placement, computed once per distinct member set (it hashes groups x members)."""
        key = frozenset(members.items())
        with self._placed_lock:  # the term threads (successor) call this beside the coordinator
            placed = self._placed.pop(key, None)
        if placed is None:
            placed = placement(members)
        with self._placed_lock:
            self._placed[key] = placed  # most recent last
            while len(self._placed) > 8:
                del self._placed[next(iter(self._placed))]
        return placed

    def _offered(self, now: float) -> list[str]:
        with self._lock:
            self._withdrawn = {g: until for g, until in self._withdrawn.items() if until > now}
            return [g for g in self.groups if g not in self._withdrawn]

    def _step(self, now: float) -> float:
        """Campaign for what is due, move groups if the balance asks for it; returns how long to sleep."""
        me = self.config.replica_id
        self._resign_all_if_asked()
        self._prune_lapsing()
        keeper = self.member.keeper
        if keeper is None or not self.view.loaded.is_set() or keeper.step_down_reason(now) is not None:
            return _IDLE_WAIT_S  # the member lease's change wakes us
        offered = self._offered(now)
        _, members, leaders, vacancies = self.view.snapshot()
        ours = members.get(me)
        if set(offered) != set(self._registered) or (ours is not None and ours.groups != frozenset(offered)):
            if self.member.set_groups(offered):  # our record changed, or someone overwrote it: write it again
                self._registered = list(offered)
        placed = {m: v.groups for m, v in members.items()}
        placed[me] = frozenset(offered)
        due_at = min([now + _IDLE_WAIT_S, *(u for u in self._withdrawn.values())])
        with self._lock:
            mine = set(self.terms) | set(self._lapsing)
        self._release_orphans(keeper, leaders, mine)
        for group in offered:
            if group in mine or group in leaders:
                continue
            if self.stopping.is_set() or keeper.step_down_reason(self.app.clock.monotonic()) is not None:
                return 0.0  # re-judged at once by the loop
            vacancy = vacancies.get(group)
            at = max(self._due(group, vacancy, placed, members), self._retry_at.get(group, 0.0))
            if now >= at:
                self._campaign(group, keeper, now)
                if group in self._retry_at:
                    due_at = min(due_at, self._retry_at[group])
            else:
                due_at = min(due_at, at)
        due_at = min(due_at, self._rebalance(now, placed, members))
        return max(0.0, due_at - now)

    def _release_orphans(self, keeper: LeaseKeeper, leaders: dict[str, KeyValue], mine: set[str]) -> None:
        """A group key on our lease that no term of ours holds (its release failed, say): the lease lives on for the
        other groups, so nothing else would ever free it. Delete it, guarded by its own create revision."""
        for group, kv in leaders.items():
            if kv.lease_id == keeper.lease_id and group not in mine:
                cfg = self.config.for_group(group)
                log.warning("group %s: its key is on our lease but no term of ours holds it: releasing it", group)
                try:
                    self.app.backend.guarded_delete(cfg.leader_key, kv.create_revision, cfg.leader_key,
                                                    cfg.call_timeout_s)
                except BackendError as err:
                    log.info("group %s: could not release it yet: %s", group, err)

    def _due(self, group: str, vacancy: Vacancy | None, placed: dict[str, frozenset[str]],
             members: dict[str, Member]) -> float:
        me = self.config.replica_id
        successor = vacancy.handover.successor_id if vacancy is not None and vacancy.handover is not None else ""
        # A vacancy that no handover explains: its leader's lease is gone, and every member on it (records may arrive
        # after the group's delete). A handover's releaser is alive and stays counted.
        dead = vacancy.dead_lease if vacancy is not None and vacancy.handover is None else 0
        alive = {m: g for m, g in placed.items() if m == me or m not in members or members[m].lease_id != dead}
        if successor and successor not in alive:
            successor = ""  # named, but gone since: placement decides
        delay = campaign_delay_s(group, me, alive, successor, self.config.shard_campaign_delay_s,
                                 None if successor else self._placement(alive))
        seen_at = vacancy.seen_at if vacancy is not None else self._loaded_at
        return seen_at + delay

    def _campaign(self, group: str, keeper: LeaseKeeper, now: float) -> None:
        cfg, app = self.config.for_group(group), self.app
        vacancy = self.view.snapshot()[3].get(group)  # fresh: the handover to follow is the latest delete's
        election = Election()
        election.campaign()
        record = leader_record(cfg.replica_id, keeper.lease_id, app.clock.wall(), jobs=self.groups[group])
        try:
            result = app.backend.campaign(cfg.leader_key, record, keeper.lease_id, cfg.call_timeout_s,
                                          also_read=(cfg.handover_key,))
        except LeaseNotFound:
            election.campaign_failed()
            keeper.mark_lost(StepDownReason.LEASE_LOST)  # the member thread replaces it
            return
        except BackendError as err:
            election.campaign_failed()
            attempt = self._attempts[group] = self._attempts.get(group, 0) + 1
            self._retry_at[group] = now + backoff_s(self._wait, attempt)
            log.info("campaign for group %s failed (attempt %d): %s", group, attempt, err)
            return
        self._attempts.pop(group, None)
        if not result.won:
            election.lost()
            self._retry_at[group] = now + 0.5  # the view brings the winner's key in a moment
            return
        self._retry_at.pop(group, None)
        handover_kv = result.extra.get(cfg.handover_key)
        handover = decode_handover(handover_kv.value) if handover_kv is not None and vacancy is not None and \
            vacancy.revision and handover_kv.mod_revision == vacancy.revision else None
        term = election.won(result.fencing_token, GroupKeeper(keeper))
        group_term = GroupTerm(self, group, election, term, result.revision, now, handover)
        with self._lock:
            self.terms[group] = group_term
        # The key may have gone between the win and now, its event finding no term to end: judge from the view.
        _, _, leaders, vacancies = self.view.snapshot()
        seen, gone = leaders.get(group), vacancies.get(group)
        if (seen is not None and seen.mod_revision > result.revision and seen.create_revision != term.fencing_token) \
                or (gone is not None and gone.revision > result.revision):
            group_term.lost()
        group_term.start()

    def _rebalance(self, now: float, placed: dict[str, frozenset[str]], members: dict[str, Member]) -> float:
        """Hand led groups to the members now preferred for them: a tenth of what we lead (at least one) per interval,
        so a member that joins fills up in seconds while a rolling restart never moves everything at once. Returns
        when to look again. Not moved yet: a term younger than the interval (the member that handed it to us may not
        have left the view yet), and a group with a run in flight (the handover would wait for it, or cancel it)."""
        interval = self.config.rebalance_interval_s
        if not self._pacer.may_move(now):
            return self._pacer.next_at() or now
        live = {m: g for m, g in placed.items() if m in members or m == self.config.replica_id}
        with self._lock:
            terms = dict(self.terms)
        moves = groups_to_move([g for g, t in terms.items() if not t.resign.is_set()], self.config.replica_id,
                               self._placement(live))
        if not moves:
            return now + _IDLE_WAIT_S
        ready = [(g, to) for g, to in moves if now - terms[g].won_at >= interval and not terms[g].busy()]
        if not ready:
            # Look again soon, at a random phase: every-second runs are busy from their claim (0.25 s ahead, when
            # armed) to their end, all at the same phase of each second, and a look every `interval` would keep
            # landing in that window and never move anything.
            return now + random.uniform(0.1, 0.3)
        batch = ready[:max(1, math.ceil(len(terms) / 10))]
        log.info("rebalance: handing %d of %d groups to the members now preferred for them (%s)", len(batch),
                 len(moves), ", ".join(f"{g}->{to}" for g, to in batch))
        for group, to in batch:
            terms[group].request_resign(to)
        self._pacer.moved(now)
        return now + interval

    def _shut_down(self) -> None:
        """Withdraw from every group (so no member counts us), let each term hand over, then revoke the lease."""
        cfg = self.config
        self.member.set_groups([])
        with self._lock:
            terms = list(self.terms.values())
        wake_all(terms)
        for term in terms:
            term.thread.join(cfg.stop_timeout_s + cfg.job_cancel_grace_s + 5.0)
        with self._lock:
            left = bool(self._lapsing)
        if left:
            log.warning("a job ignored its cancel: not revoking the member lease; it expires by itself")
            self.member.abandon()
        else:
            self.member.release(cfg.call_timeout_s + 1.0)
