"""The tick ledger: independent evidence of who ticked when, and the invariants checked on it.

`record_tick` is a job (`--job singleton.dev.ledger:record_tick`) that appends one JSON line when a
tick starts and one when it ends to the file named by $SINGLETON_LEDGER, with single O_APPEND writes so
lines from several processes never interleave. CLOCK_MONOTONIC is system-wide on Linux, so the
monotonic stamps of different processes on one machine compare directly.
"""
from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from singleton.runtime.jobs import TickContext

LEDGER_ENV = "SINGLETON_LEDGER"
HOLD_ENV = "SINGLETON_LEDGER_HOLD_S"  # how long each tick "works" (default 0.05 s)
FAIL_EVERY_ENV = "SINGLETON_LEDGER_FAIL_EVERY"  # raise after every Nth slot (0: never)
# A file whose existence arms one hang: the first tick (of any replica sharing the path) that removes it
# never returns and ignores its cancel signal, as a job stuck in a call without a timeout would.
HANG_FILE_ENV = "SINGLETON_LEDGER_HANG_FILE"
# The same for a crash: the tick that removes this file kills its own process (SIGKILL) halfway through its work.
CRASH_FILE_ENV = "SINGLETON_LEDGER_CRASH_FILE"


class TickFailed(RuntimeError):
    """The chaos harness's deliberately failing job."""


def _append(path: str, record: dict[str, object]) -> None:
    line = (json.dumps(record, separators=(",", ":")) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def _claim_hang(env: str = HANG_FILE_ENV) -> bool:
    """True for exactly one tick per arming: unlink succeeds for one process only."""
    hang_file = os.environ.get(env)
    if not hang_file:
        return False
    try:
        os.unlink(hang_file)
    except FileNotFoundError:
        return False
    return True


def record_tick(ctx: TickContext) -> None:
    path = os.environ[LEDGER_ENV]
    base = {"replica": ctx.replica_id, "pid": os.getpid(), "token": ctx.fencing_token, "slot": ctx.slot}
    hang = _claim_hang()
    flag: dict[str, object] = {"hung": True} if hang else {}
    if ctx.coalesced_slots is not None:  # a catch-up run: the slots it stands in for
        flag["coalesced"] = list(ctx.coalesced_slots)
    _append(path, {**base, "ev": "start", "mono": time.monotonic(), "wall": time.time(), **flag})
    while hang:  # never ends, cancel or not: only killing the process stops it
        time.sleep(3600)
    if _claim_hang(CRASH_FILE_ENV):
        time.sleep(float(os.environ.get(HOLD_ENV, "0.05")) / 2)
        os.kill(os.getpid(), signal.SIGKILL)  # a crash inside the job: the whole process dies
    ctx.cancel_event.wait(float(os.environ.get(HOLD_ENV, "0.05")))
    _append(path, {**base, "ev": "end", "mono": time.monotonic(), "wall": time.time(), "cancelled": ctx.cancelled})
    fail_every = int(os.environ.get(FAIL_EVERY_ENV, "0"))
    if fail_every and ctx.slot % fail_every == 0:
        raise TickFailed(f"slot {ctx.slot}: failing on purpose (every {fail_every})")


@dataclass
class Tick:
    replica: str
    pid: int
    token: int
    slot: int
    start_mono: float
    start_wall: float
    end_mono: float | None = None
    hung: bool = False  # the tick that claimed the armed hang (it never ends)
    coalesced: tuple[int, int] | None = None  # a catch-up run (--catch-up coalesce): first and last slot it stood for

    @property
    def finished(self) -> bool:
        return self.end_mono is not None


def read_ledger(path: str | Path) -> list[Tick]:
    ticks: dict[tuple[int, int], Tick] = {}
    p = Path(path)
    if not p.exists():
        return []
    for line in p.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue  # a torn last line of a killed writer
        key = (rec["pid"], rec["slot"])
        if rec["ev"] == "start":
            stood_for = rec.get("coalesced")
            ticks[key] = Tick(rec["replica"], rec["pid"], rec["token"], rec["slot"], rec["mono"], rec["wall"],
                              hung=rec.get("hung", False),
                              coalesced=(stood_for[0], stood_for[1]) if stood_for else None)
        elif key in ticks:
            ticks[key].end_mono = rec["mono"]
    return sorted(ticks.values(), key=lambda t: t.start_mono)


def overlaps(ticks: Iterable[Tick]) -> list[tuple[Tick, Tick]]:
    """Pairs of ticks that ran at the same time (an unfinished tick counts as running until the next start)."""
    ordered = sorted(ticks, key=lambda t: t.start_mono)
    found = []
    for prev, cur in zip(ordered, ordered[1:]):
        if prev.end_mono is not None and cur.start_mono < prev.end_mono:
            found.append((prev, cur))
    return found


def duplicate_slots(ticks: Iterable[Tick]) -> list[int]:
    seen: dict[int, int] = {}
    for t in ticks:
        seen[t.slot] = seen.get(t.slot, 0) + 1
    return sorted(slot for slot, n in seen.items() if n > 1)


def tokens_grow(ticks: Iterable[Tick]) -> bool:
    """Each change of leader (token) in time order brings a larger token."""
    tokens = [t.token for t in sorted(ticks, key=lambda t: t.start_mono)]
    changes = [b for a, b in zip(tokens, tokens[1:]) if a != b]
    return all(b > a for a, b in zip([tokens[0], *changes], changes)) if tokens else True


def safety_violations(ticks: Iterable[Tick]) -> list[str]:
    """The safety invariants, as sentences (none when they held): no two ticks at once, no slot twice,
    a larger token with each change of leader."""
    ticks = list(ticks)
    problems = []
    if overlapping := overlaps(ticks):
        problems.append(f"overlapping ticks: {overlapping}")
    if twice := duplicate_slots(ticks):
        problems.append(f"slots run twice: {twice}")
    if not tokens_grow(ticks):
        problems.append(f"a change of leader did not bring a larger token: {[t.token for t in ticks]}")
    return problems


def missed_slots(ticks: Iterable[Tick]) -> list[int]:
    slots = sorted({t.slot for t in ticks})
    return [s for a, b in zip(slots, slots[1:]) for s in range(a + 1, b)]
