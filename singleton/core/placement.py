"""Sharding's placement: which live member should lead each group, decided the same way on every replica. No I/O.

Rendezvous (highest random weight) hashing with bounded loads: every (group, member) pair gets a score from a hash
every host computes alike; groups, taken in a fixed hashed order, each go to their highest-scoring member that still
has room (floor(groups / members) each, one more for as many members as the remainder). Plain rendezvous leaves
members 2x apart at 50 groups on 5 members; the bound makes the spread even (0 to 1 apart), and a member joining
still moves about 1.3/N of the groups (plain: 1/N). Everyone computes the same placement from the same member records (a watch of `<prefix>/<name>/members/`,
each record listing the groups its replica can lead); nothing else is coordinated.

`RebalancePacer` decides when a leader may hand a group to a member now preferred for it: at most one group per
interval, so a member that joins (or a rolling restart) moves groups a few at a time, never all at once.
"""
from __future__ import annotations

import hashlib
from collections.abc import Collection, Iterable, Mapping


def rendezvous_score(group: str, member: str) -> int:
    """A stable 64-bit score: the same on every host and Python run (unlike hash(), which is salted)."""
    key = (group, member)
    score = _scores.get(key)
    if score is None:
        if len(_scores) > _MAX_SCORES:
            _scores.clear()  # members come and go (new ids after restarts): bound the memory, recompute
        digest = hashlib.blake2b(f"{group}\x00{member}".encode(), digest_size=8).digest()
        score = _scores[key] = int.from_bytes(digest, "big")
    return score


_scores: dict[tuple[str, str], int] = {}  # scores never change: a placement at 50 members x 500 groups reuses 25 000
_MAX_SCORES = 1_000_000


def ranked_members(group: str, members: Iterable[str]) -> list[str]:
    """Members from highest to lowest score for `group` (ties, practically impossible, broken by id)."""
    return sorted(set(members), key=lambda m: (-rendezvous_score(group, m), m))


def placement(members: Mapping[str, Collection[str]]) -> dict[str, str]:
    """Each group any member can lead -> its preferred owner, among the members that registered it."""
    groups = sorted({g for gs in members.values() for g in gs}, key=lambda g: (rendezvous_score(g, ""), g))
    if not groups:
        return {}
    # Each member holds floor(groups / members), and `extra` of them (the first to get there) one more: a cap of
    # ceil() for everyone would let the greedy pass fill some members to the top and starve a late one (50 groups
    # on 6 members: 9,9,9,9,8,6). Members offering nothing (stopping) are not counted: they take no share.
    floor, extra = divmod(len(groups), sum(1 for gs in members.values() if gs) or 1)
    load = dict.fromkeys(members, 0)
    out: dict[str, str] = {}
    for group in groups:
        ranked = ranked_members(group, [m for m, gs in members.items() if group in gs])
        cap = floor + (1 if extra > 0 else 0)
        # The best member with room; when every one that can lead it is full (uneven registrations), the best.
        owner = next((m for m in ranked if load[m] < cap), ranked[0])
        out[group] = owner
        load[owner] += 1
        if load[owner] == floor + 1 and extra > 0:
            extra -= 1
    return out


def campaign_delay_s(group: str, me: str, members: Mapping[str, Collection[str]], successor: str | None,
                     delay_s: float, placed: Mapping[str, str] | None = None) -> float:
    """How long this member waits, once `group` is vacant, before campaigning for it.

    A handover names its successor: that member goes at once and every other waits (even the preferred one: the
    leader that resigned may itself be the preferred). Otherwise the preferred owner goes at once. The rest wait in
    rank order (delay_s, then +10 % per rank), so that a group whose first choice is gone, slow or cut off is still
    taken, by one member first rather than all at once. `placed`: placement(members), if known (not needed when a
    successor is named).
    """
    if successor:
        owner: str | None = successor
    else:
        owner = (placed if placed is not None else placement(members)).get(group)
    if owner is None or owner == me:
        return 0.0
    others = [m for m, gs in members.items() if group in gs and m != owner] + [me]
    rank = ranked_members(group, others).index(me)
    return delay_s * (1.0 + 0.1 * rank)


def successor_for(group: str, leaving: str, members: Mapping[str, Collection[str]]) -> str | None:
    """Whom a leader that hands `group` over names: its preferred owner once `leaving` is left out."""
    return placement({m: gs for m, gs in members.items() if m != leaving}).get(group)


def groups_to_move(led: Iterable[str], me: str, placed: Mapping[str, str]) -> list[tuple[str, str]]:
    """(group, member) for each group this member leads whose preferred owner is now another member."""
    return [(g, placed[g]) for g in sorted(led) if placed.get(g) not in (None, me)]


class RebalancePacer:
    """At most one rebalancing handover per `interval_s` (per replica). Fed the monotonic clock."""

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self._last_at: float | None = None

    def may_move(self, now: float) -> bool:
        return self._last_at is None or now - self._last_at >= self.interval_s

    def moved(self, now: float) -> None:
        self._last_at = now

    def next_at(self) -> float | None:
        """When the next move may happen (None: at once)."""
        return None if self._last_at is None else self._last_at + self.interval_s
