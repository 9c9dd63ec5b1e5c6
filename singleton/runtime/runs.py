"""The leader's side of the run record: every slot is claimed in etcd before it runs, and the outcome of each run
is folded into the next claim (one transaction per run at steady state).

A claim compares the leader key's create revision with our fencing token *and* the run key's mod revision with
the one we last saw: a term that lost its key, or whose chain someone else extended, cannot claim (it steps down),
and a slot is claimed at most once, whatever the clocks of the hosts say.
"""
from __future__ import annotations

import enum
import logging
import threading

from singleton.backends.abc import Backend, Claim, KeyValue
from singleton.core.clock import Clock
from singleton.core.config import Config
from singleton.core.errors import BackendError
from singleton.core.runs import history_index
from singleton.core.records import RunEntry, RunRecord, decode_run

log = logging.getLogger("singleton")


class ClaimOutcome(enum.Enum):
    CLAIMED = "claimed"
    REFUSED = "refused"  # the term is over: step down, do not run
    FAILED = "failed"  # no answer (timeout, unreachable): the slot is not run; we re-read before the next claim


class RunChain:
    """Thread-safe where it must be: the ticker claims, the job threads report finished runs."""

    def __init__(self, config: Config, backend: Backend, clock: Clock, fencing_token: int,
                 record: KeyValue | None) -> None:
        self.config, self.backend, self.clock, self.token = config, backend, clock, fencing_token
        self._lock = threading.Lock()
        self.revision = record.mod_revision if record is not None else 0
        self.record = decode_run(record.value) if record is not None else None
        self._seq = self.record.seq if self.record else 0
        self._unsure = False  # a claim went unanswered: it may have been applied
        self._pending: list[RunEntry] = []  # finished runs not yet written to the history
        self.claimed: tuple[int, int, int] | None = None  # (slot, claim revision, seq) of our latest claim
        self._seqs: dict[int, int] = {}  # slot -> seq of our recent claims (a run may report after the next claim)

    @property
    def last_slot(self) -> int | None:
        """The last slot anyone claimed, as the record says."""
        return self.record.slot if self.record else None

    def claim_of(self, slot: int) -> Claim | None:
        """What a run of `slot` fences its writes with: the run key at the revision of its claim."""
        claimed = self.claimed
        return (self.config.run_key, claimed[1]) if claimed and claimed[0] == slot else None

    def seq_of(self, slot: int) -> int:
        with self._lock:
            return self._seqs.get(slot, 0)

    def _claimed(self, slot: int, revision: int, seq: int) -> None:
        self.claimed = (slot, revision, seq)
        with self._lock:
            self._seqs[slot] = seq
            for old in sorted(self._seqs)[:-8]:  # bounded: a report comes at most a few claims late
                del self._seqs[old]

    def unknown_outcome_of_predecessor(self) -> None:
        """After a takeover that was not a handover, the last claimed run's outcome died with its leader."""
        if self.record is not None and self.record.seq:
            self._add(RunEntry(seq=self.record.seq, slot=self.record.slot, fencing_token=self.record.fencing_token,
                               replica_id=self.record.replica_id, outcome="unknown"))

    def claim(self, slot: int, coalesced_from: int = 0, timeout_s: float | None = None) -> ClaimOutcome:
        """`timeout_s`: how long the claim may take (default the call timeout); a claim that cannot finish
        within its slot's own second is of no use, so the ticker passes what is left of it."""
        cfg = self.config
        timeout_s = cfg.call_timeout_s if timeout_s is None else max(0.05, min(timeout_s, cfg.call_timeout_s))
        if self._unsure and not self._reread(timeout_s):
            return ClaimOutcome.FAILED
        if self.claimed and self.claimed[0] == slot:
            return ClaimOutcome.CLAIMED  # the unanswered claim had been applied after all
        seq = self._seq + 1
        record = RunRecord(seq=seq, slot=slot, fencing_token=self.token, replica_id=cfg.replica_id,
                           claimed_at_unix_s=self.clock.wall(), coalesced_from=coalesced_from)
        with self._lock:
            pending = list(self._pending)
        puts = {cfg.run_key: record.SerializeToString(), **self._history_puts(pending)}
        try:
            revision = self.backend.claim(cfg.leader_key, self.token, (cfg.run_key, self.revision), puts, timeout_s)
        except BackendError as err:
            self._unsure = True
            log.warning("could not claim slot %d (not running it): %s", slot, err)
            return ClaimOutcome.FAILED
        if revision is None:
            return ClaimOutcome.REFUSED
        with self._lock:
            del self._pending[:len(pending)]
        self.revision, self.record, self._seq = revision, record, seq
        self._claimed(slot, revision, seq)
        return ClaimOutcome.CLAIMED

    def _reread(self, timeout_s: float) -> bool:
        """After an unanswered claim: read the record; if our claim was applied, adopt it."""
        try:
            kv, _ = self.backend.get(self.config.run_key, timeout_s)
        except BackendError:
            return False
        record = decode_run(kv.value) if kv is not None else None
        if kv is not None and record is not None and record.fencing_token == self.token and record.seq > self._seq:
            self.revision, self.record, self._seq = kv.mod_revision, record, record.seq
            self._claimed(record.slot, kv.mod_revision, record.seq)
            with self._lock:  # what that claim carried is in the history now
                self._pending = [e for e in self._pending if e.seq >= record.seq]
        self._unsure = False
        return True

    def finished(self, slot: int, started_at_unix_s: float, duration_s: float, outcome: str, error: str = "",
                 coalesced_from: int = 0) -> None:
        seq = self.seq_of(slot)
        if seq:
            self._add(RunEntry(seq=seq, slot=slot, fencing_token=self.token, replica_id=self.config.replica_id,
                               started_at_unix_s=started_at_unix_s, duration_s=duration_s, outcome=outcome,
                               error=error[:500], coalesced_from=coalesced_from))

    def not_run(self, slot: int, outcome: str) -> None:
        """A claimed slot that did not run (skipped: overrun; late: woken too late)."""
        self.finished(slot, 0.0, 0.0, outcome)

    def _add(self, entry: RunEntry) -> None:
        with self._lock:
            self._pending.append(entry)

    def _history_puts(self, entries: list[RunEntry]) -> dict[str, bytes]:
        size = self.config.history_size
        return {f"{self.config.history_prefix}{history_index(e.seq, size)}": e.SerializeToString() for e in entries}

    def final_puts(self) -> dict[str, bytes]:
        """The history not yet written, for the handover transaction."""
        with self._lock:
            pending, self._pending = list(self._pending), []
        return self._history_puts(pending)
