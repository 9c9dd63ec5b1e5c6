"""Sharding's placement: which live member should lead each group, decided the same way on every replica. No I/O.

Rendezvous (highest random weight) hashing: every (group, member) pair gets a score from a hash both sides can
compute; a group's preferred owner is the member with the highest score among those that can lead it. Adding a
member moves only the groups it now wins (about 1/N of them); removing one moves only the groups it held. No
coordination is needed beyond everyone seeing the same member list (a watch of `<prefix>/<name>/members/`).

`RebalancePacer` decides when a leader may hand a group to a member now preferred for it: at most one group per
interval, so a member that joins (or a rolling restart) moves groups a few at a time, never all at once.
"""
from __future__ import annotations

import hashlib
from collections.abc import Collection, Iterable, Mapping


def rendezvous_score(group: str, member: str) -> int:
    """A stable 64-bit score: the same on every host and Python run (unlike hash(), which is salted)."""
    digest = hashlib.blake2b(f"{group}\x00{member}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def ranked_members(group: str, members: Iterable[str]) -> list[str]:
    """Members from most to least preferred for `group` (ties, practically impossible, broken by id)."""
    return sorted(set(members), key=lambda m: (-rendezvous_score(group, m), m))


def preferred_owner(group: str, members: Iterable[str]) -> str | None:
    ranked = ranked_members(group, members)
    return ranked[0] if ranked else None


def eligible(group: str, members: Mapping[str, Collection[str]]) -> list[str]:
    """The members that can lead `group`: those that registered it (they run its jobs)."""
    return [m for m, groups in members.items() if group in groups]


def placement(groups: Iterable[str], members: Mapping[str, Collection[str]]) -> dict[str, str | None]:
    """Each group's preferred owner among the members that registered it (None: no member can lead it)."""
    return {g: preferred_owner(g, eligible(g, members)) for g in groups}


def campaign_delay_s(group: str, me: str, members: Mapping[str, Collection[str]], successor: str | None,
                     delay_s: float) -> float:
    """How long this member waits, once `group` is vacant, before campaigning for it.

    A handover names its successor: that member goes at once and every other waits (even the preferred one: the
    leader that resigned may itself be the preferred). Otherwise the preferred owner goes at once, and the rest
    wait in rank order (delay_s, then +10 % per rank), so that an orphaned group is still taken when its
    preferred owner is gone or cut off, by one member rather than all of them at once.
    """
    if successor:
        return 0.0 if successor == me else delay_s
    ranked = ranked_members(group, eligible(group, members) + [me])
    rank = ranked.index(me)
    return 0.0 if rank == 0 else delay_s * (1.0 + 0.1 * (rank - 1))


def successor_for(group: str, leaving: str, members: Mapping[str, Collection[str]]) -> str | None:
    """Whom a leader that hands `group` over names: the preferred owner among the others."""
    return preferred_owner(group, [m for m in eligible(group, members) if m != leaving])


def groups_to_move(led: Iterable[str], me: str, members: Mapping[str, Collection[str]]) -> list[tuple[str, str]]:
    """(group, member) for each group this member leads whose preferred owner is now another live member."""
    moves = []
    for group in sorted(led):
        owner = preferred_owner(group, eligible(group, members) + [me])
        if owner is not None and owner != me:
            moves.append((group, owner))
    return moves


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
