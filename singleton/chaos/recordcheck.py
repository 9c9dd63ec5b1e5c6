"""The run record checked against the ledger: etcd's account of every run (the history ring and the last claim)
must match the ticks the job itself wrote down, one history entry per tick, with the tick's slot and token.

The ledger is the independent evidence; the history is what the leaders claimed and reported. Two accounts that
agree on every run make "no slot twice" a statement about the record too, not only about the slot numbers.
"""
from __future__ import annotations

from collections.abc import Iterable

from singleton.dev.ledger import Tick
from singleton.v1.run_pb2 import RunEntry, RunRecord

# Outcomes that say the job ran to its end (so the ledger must have its tick). A claimed slot that never ran
# (skipped, late) and a run whose leader died before reporting it (unknown) may lack a finished ledger tick.
RAN = ("ok", "failed", "cancelled")


def _describe(t: Tick) -> str:
    return f"slot {t.slot} (token {t.token}, {t.replica})"


def _still_running_at_the_end(t: Tick, ticks: list[Tick]) -> bool:
    """An unfinished tick that no successor followed: killed at the scenario's end with nobody to report it.
    (Any later term took over from it, and a takeover writes the "unknown" entry of the last claim.)"""
    return not t.finished and not any(o.token != t.token and o.start_mono > t.start_mono for o in ticks)


def record_violations(ticks: Iterable[Tick], entries: Iterable[RunEntry], record: RunRecord | None,
                      history_size: int) -> list[str]:
    """Sentences, none when the record and the ledger agree:
    - every ledger tick has exactly one history entry, with its slot and fencing token; the one exception is a
      tick that never finished and after which no other term ticked (no successor wrote its "unknown" entry);
    - no two entries share a slot, and the entries' seq strictly grows with their slot;
    - every entry that says its job ran has a ledger tick with its slot and token;
    - the record is the last claim: no entry beyond its seq or slot."""
    ticks, entries = list(ticks), sorted(entries, key=lambda e: e.seq)
    problems: list[str] = []
    if record is not None and record.seq > history_size:
        problems.append(f"the history ring ({history_size}) is smaller than the run's {record.seq} claims (harness)")
        return problems
    by_slot: dict[int, list[RunEntry]] = {}
    for e in entries:
        by_slot.setdefault(e.slot, []).append(e)
    if shared := sorted(slot for slot, found in by_slot.items() if len(found) > 1):
        problems.append(f"{len(shared)} slot(s) with more than one history entry (claimed twice): {shared[:5]}")
    if backwards := [(a, b) for a, b in zip(entries, entries[1:]) if b.slot <= a.slot]:
        a, b = backwards[0]
        problems.append(f"{len(backwards)} history entr(ies) out of order: run #{b.seq} has slot {b.slot}, "
                        f"run #{a.seq} before it slot {a.slot}")
    missing = [t for t in ticks if t.slot not in by_slot and not _still_running_at_the_end(t, ticks)]
    if missing:
        problems.append(f"{len(missing)} tick(s) with no history entry: "
                        f"{', '.join(_describe(t) for t in missing[:5])}")
    wrong = [(t, by_slot[t.slot][0]) for t in ticks
             if t.slot in by_slot and all(e.fencing_token != t.token for e in by_slot[t.slot])]
    if wrong:
        problems.append(f"{len(wrong)} tick(s) whose history entry names another term: "
                        + ", ".join(f"{_describe(t)} recorded with token {e.fencing_token} by {e.replica_id}"
                                    for t, e in wrong[:5]))
    ticked = {(t.slot, t.token) for t in ticks}
    unseen = [e for e in entries if e.outcome in RAN and (e.slot, e.fencing_token) not in ticked]
    if unseen:
        problems.append(f"{len(unseen)} history entr(ies) of runs the ledger never saw: "
                        + ", ".join(f"slot {e.slot} ({e.outcome}, token {e.fencing_token})" for e in unseen[:5]))
    if entries and record is None:
        problems.append(f"{len(entries)} history entries but no run record")
    elif record is not None and entries and (entries[-1].seq > record.seq or
                                             max(e.slot for e in entries) > record.slot):
        problems.append(f"the run record (run #{record.seq}, slot {record.slot}) is behind its own history "
                        f"(run #{entries[-1].seq}, slot {max(e.slot for e in entries)})")
    if ticks and record is None:
        problems.append("ticks ran but etcd has no run record")
    return problems
