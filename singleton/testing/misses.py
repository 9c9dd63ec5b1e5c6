"""Judging missed instants in tests on a shared, busy machine: a slot nobody ran is a protocol failure (a handover that
lost a slot) unless the replica responsible logged why the machine made it skip: it woke too late, the previous run
was still going, every worker was busy, its claim timed out, or its term ended in trouble (the lease running low or
lost) rather than by a handover. Those are counted and printed, never hidden; anything else fails the test."""
from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from singleton.dev.ledger import Tick, missed_slots

_SKIPPED = re.compile(r"slot (\d+) job=(\S+) skipped: (woke|the previous run|every worker)")
_NOT_CLAIMED = re.compile(r"could not claim slot (\d+) of job (\S+) \(not running it\)")
_ELECTED = re.compile(r"elected leader of group (\S+) replica=\S+ token=(\d+)")
_TROUBLE = re.compile(r"stepping down \((lease_expiring|renewals_failed|lease_lost|leadership_lost|claim_refused|"
                      r"ticker_failed|job_hung)\) replica=\S+ token=(\d+)")


@dataclass
class Misses:
    unexplained: dict[str, list[int]] = field(default_factory=dict)
    explained: Counter[str] = field(default_factory=Counter)  # reason -> slots

    def summary(self) -> str:
        reasons = ", ".join(f"{n} {why}" for why, n in sorted(self.explained.items())) or "none"
        return f"missed slots explained by the machine: {reasons}"


def judge_misses(runs: Mapping[str, Iterable[Tick]], log_lines: Iterable[str], group_of: Mapping[str, str],
                 excused: Mapping[str, Iterable[int]] | None = None) -> Misses:
    """`runs`: job -> its ticks; `group_of`: job -> its group; `excused`: job -> slots the test itself excuses."""
    skipped: dict[tuple[str, int], str] = {}
    group_by_token: dict[int, str] = {}
    troubled: list[tuple[int, str]] = []
    for line in log_lines:
        if m := _SKIPPED.search(line):
            skipped[(m.group(2), int(m.group(1)))] = f"skipped ({m.group(3)})"
        elif m := _NOT_CLAIMED.search(line):
            skipped[(m.group(2), int(m.group(1)))] = "claim failed"
        elif m := _ELECTED.search(line):
            group_by_token[int(m.group(2))] = m.group(1)
        elif m := _TROUBLE.search(line):
            troubled.append((int(m.group(2)), m.group(1)))
    trouble_by_group: dict[str, list[tuple[int, str]]] = {}
    for token, why in troubled:
        if token in group_by_token:
            trouble_by_group.setdefault(group_by_token[token], []).append((token, why))
    out = Misses()
    for job, ticks in runs.items():
        ordered = sorted(ticks, key=lambda t: t.slot)
        free = set((excused or {}).get(job, ()))
        for slot in missed_slots(ordered):
            if slot in free:
                continue
            before = max((t.token for t in ordered if t.slot < slot), default=0)
            after = min((t.token for t in ordered if t.slot > slot), default=before)
            if (job, slot) in skipped:
                out.explained[skipped[(job, slot)]] += 1
            elif why := next((w for tok, w in trouble_by_group.get(group_of[job], []) if before <= tok < after), ""):
                out.explained[f"term ended by {why}"] += 1
            else:
                out.unexplained.setdefault(job, []).append(slot)
    return out
