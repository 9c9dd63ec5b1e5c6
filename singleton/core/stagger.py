"""Staggered campaigns: on a vacancy, each standby waits its own delay before it campaigns, so that one goes first
and the rest see its put and stand by again, instead of every standby granting a lease and sending a transaction
at once (N-1 campaigns per leader's death). Pure: the runtime waits (runtime/campaign.py)."""
from __future__ import annotations

import hashlib


def stagger_s(replica_id: str, vacancy: int, stagger_max_s: float) -> float:
    """This replica's delay in [0, stagger_max_s) for the vacancy `vacancy` (the ended term's fencing token).

    A hash, not a random draw: every standby computes its own from what all of them know, so the order is fixed
    per vacancy (the same standby is first at the sensing and at the campaign of one vacancy) yet differs from one
    vacancy to the next (no replica is always first). Uniform: of n standbys the first waits stagger_max_s/(n+1)
    on average, and the others campaign only if the first's put has not reached them by their own turn."""
    if stagger_max_s <= 0:
        return 0.0
    digest = hashlib.blake2b(f"{vacancy}/{replica_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0 ** 64 * stagger_max_s
