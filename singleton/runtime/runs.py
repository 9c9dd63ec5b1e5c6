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
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

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


@dataclass(frozen=True)
class ControlFence:
    """The job's control record (core.control) in a claim: compared, so a leader that has not yet seen an operator's
    pause cannot claim past it; rewritten in the same transaction when the claim consumes a request (skip-next, a
    trigger), so a request is consumed exactly once, whoever leads."""

    compare: Claim
    puts: dict[str, bytes] = field(default_factory=dict)
    on_claimed: Callable[[int], None] = lambda revision: None
    # A refused claim: True when the term still stands and only the control record had moved (not a step-down).
    control_moved: Callable[[], bool] = lambda: False


@dataclass(frozen=True)
class Prepared:
    """One job's part of a claim transaction."""

    chain: RunChain
    slot: int
    claim: Claim  # the run key and the mod revision it must still have
    puts: dict[str, bytes]  # the new record and the finished runs' history
    record: RunRecord
    pending: int  # how many history entries ride along
    control: ControlFence | None = None

    @property
    def compares(self) -> list[Claim]:
        return [self.claim] if self.control is None else [self.claim, self.control.compare]


class RunChain:
    """Thread-safe where it must be: the ticker claims, the job threads report finished runs."""

    def __init__(self, config: Config, backend: Backend, clock: Clock, fencing_token: int,
                 record: KeyValue | None, job: str | None = None) -> None:
        """`job`: the job's name for its own keys (config.job_run_key); None for the legacy single job."""
        self.config, self.backend, self.clock, self.token = config, backend, clock, fencing_token
        self.job = job
        self.run_key, self.history_prefix = config.job_run_key(job), config.job_history_prefix(job)
        self._lock = threading.Lock()
        self.revision = record.mod_revision if record is not None else 0
        self.record = decode_run(record.value) if record is not None else None
        self._seq = self.record.seq if self.record else 0
        self._unsure = False  # a claim went unanswered: it may have been applied
        self._pending: list[RunEntry] = []  # finished runs not yet written to the history
        self.claimed: tuple[int, int, int] | None = None  # (slot, claim revision, seq) of our latest claim
        self._seqs: dict[int, int] = {}  # slot -> seq of our recent claims (a run may report after the next claim)
        # Set by the leader's job control (runtime.control): (slot, may consume a request) -> the control fence.
        self.control: Callable[[int, bool], ControlFence | None] | None = None
        self._manual: dict[int, tuple[str, str, str]] = {}  # seq -> (trigger id, by, reason) of manual runs

    def load(self, record: KeyValue | None) -> None:
        """The record as read at the start of the term (named jobs: read together, after the campaign)."""
        self.revision = record.mod_revision if record is not None else 0
        self.record = decode_run(record.value) if record is not None else None
        self._seq = self.record.seq if self.record else 0

    @property
    def last_seq(self) -> int:
        return self._seq

    @property
    def last_slot(self) -> int | None:
        """The last slot anyone claimed, as the record says."""
        return self.record.slot if self.record else None

    def claim_of(self, slot: int) -> Claim | None:
        """What a run of `slot` fences its writes with: the run key at the revision of its claim."""
        claimed = self.claimed
        return (self.run_key, claimed[1]) if claimed and claimed[0] == slot else None

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
            manual = self.record.trigger_id  # an operator's trigger: not a run of the record's slot
            self._add(RunEntry(seq=self.record.seq, slot=0 if manual else self.record.slot,
                               fencing_token=self.record.fencing_token, replica_id=self.record.replica_id,
                               outcome="unknown", trigger_id=manual))

    def claim(self, slot: int, coalesced_from: int = 0, timeout_s: float | None = None) -> ClaimOutcome:
        """`timeout_s`: how long the claim may take (default the call timeout); a claim that cannot finish
        within its slot's own second is of no use, so the ticker passes what is left of it."""
        timeout_s = self._timeout(timeout_s)
        prepared = self.prepare(slot, coalesced_from, timeout_s)
        if isinstance(prepared, ClaimOutcome):
            return prepared
        try:
            if prepared.control is None:
                revision = self.backend.claim(self.config.leader_key, self.token, prepared.claim, prepared.puts,
                                              timeout_s)
            else:
                revision = self.backend.claim_all(self.config.leader_key, self.token, prepared.compares,
                                                  prepared.puts, timeout_s)
        except BackendError as err:
            self.unanswered(slot, err)
            return ClaimOutcome.FAILED
        return self.answered(prepared, revision)

    def _timeout(self, timeout_s: float | None) -> float:
        cfg = self.config
        return cfg.call_timeout_s if timeout_s is None else max(0.05, min(timeout_s, cfg.call_timeout_s))

    def prepare(self, slot: int, coalesced_from: int = 0, timeout_s: float | None = None) -> Prepared | ClaimOutcome:
        """What the claim of `slot` compares and writes; an outcome instead when no transaction is needed (or
        possible: an unanswered earlier claim could not be settled)."""
        if self._unsure and not self._reread(self._timeout(timeout_s)):
            return ClaimOutcome.FAILED
        if self.claimed and self.claimed[0] == slot:
            return ClaimOutcome.CLAIMED  # the unanswered claim had been applied after all
        seq = self._seq + 1
        record = RunRecord(seq=seq, slot=slot, fencing_token=self.token, replica_id=self.config.replica_id,
                           claimed_at_unix_s=self.clock.wall(), coalesced_from=coalesced_from)
        with self._lock:
            pending = list(self._pending)
        fence = self.control(slot, coalesced_from == 0) if self.control is not None else None
        puts = {self.run_key: record.SerializeToString(), **self._history_puts(pending), **(fence.puts if fence else {})}
        return Prepared(self, slot, (self.run_key, self.revision), puts, record, len(pending), fence)

    def claim_manual(self, trigger_id: str, by: str, reason: str, fence: ControlFence,
                     timeout_s: float | None = None) -> tuple[ClaimOutcome, int]:
        """Claim an operator's trigger: a new run (seq) in the record, whose slot stays the last scheduled one so the
        schedule's numbering goes on; the fence removes the trigger in the same transaction. Returns the outcome and
        the run's seq; the run's own slot (for its context and report) is -seq."""
        timeout_s = self._timeout(timeout_s)
        if self._unsure and not self._reread(timeout_s):
            return ClaimOutcome.FAILED, 0
        seq = self._seq + 1
        record = RunRecord(seq=seq, slot=self.last_slot or 0, fencing_token=self.token,
                           replica_id=self.config.replica_id, claimed_at_unix_s=self.clock.wall(),
                           trigger_id=trigger_id)
        with self._lock:
            pending = list(self._pending)
        puts = {self.run_key: record.SerializeToString(), **self._history_puts(pending), **fence.puts}
        prepared = Prepared(self, -seq, (self.run_key, self.revision), puts, record, len(pending), fence)
        try:
            revision = self.backend.claim_all(self.config.leader_key, self.token, prepared.compares, puts, timeout_s)
        except BackendError as err:
            self.unanswered(-seq, err)
            return ClaimOutcome.FAILED, 0
        outcome = self.answered(prepared, revision)
        if outcome is ClaimOutcome.CLAIMED:
            with self._lock:
                self._manual[seq] = (trigger_id, by, reason)
        return outcome, seq

    def unanswered(self, slot: int, err: BackendError) -> None:
        self._unsure = True
        log.warning("could not claim slot %d%s (not running it): %s", slot, self._of_job, err)

    @property
    def _of_job(self) -> str:
        return "" if self.job is None else f" of job {self.job}"

    def answered(self, prepared: Prepared, revision: int | None) -> ClaimOutcome:
        if revision is None:
            # Refused: the term is over, unless only the job's control record had moved (an operator's write that
            # the leader had not yet seen): then nothing is claimed now and the loop judges the slot again.
            if prepared.control is not None and prepared.control.control_moved():
                return ClaimOutcome.FAILED
            return ClaimOutcome.REFUSED
        if prepared.control is not None:
            prepared.control.on_claimed(revision)
        with self._lock:
            del self._pending[:prepared.pending]
        self.revision, self.record, self._seq = revision, prepared.record, prepared.record.seq
        self._claimed(prepared.slot, revision, prepared.record.seq)
        return ClaimOutcome.CLAIMED

    def _reread(self, timeout_s: float) -> bool:
        """After an unanswered claim: read the record; if our claim was applied, adopt it."""
        try:
            kv, _ = self.backend.get(self.run_key, timeout_s)
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
            manual = self._manual.pop(entry.seq, None)
            if manual is not None:  # an operator's trigger: its slot is the record's, not a slot of the schedule
                entry.slot = 0
                entry.trigger_id, entry.triggered_by, entry.trigger_reason = manual
            self._pending.append(entry)

    def _history_puts(self, entries: list[RunEntry]) -> dict[str, bytes]:
        size = self.config.history_size
        return {f"{self.history_prefix}{history_index(e.seq, size)}": e.SerializeToString() for e in entries}

    def flush_history(self, timeout_s: float) -> bool:
        """Write the finished runs' history now, without a claim (a paused job makes none): guarded by the term and
        by the run record still being ours. False when nothing was written (kept for the next claim)."""
        with self._lock:
            pending = list(self._pending)
        if not pending:
            return False
        try:
            written = self.backend.claim_all(self.config.leader_key, self.token, [(self.run_key, self.revision)],
                                             self._history_puts(pending), timeout_s)
        except BackendError:
            return False
        if written is None:
            return False
        with self._lock:
            del self._pending[:len(pending)]
        return True

    def final_puts(self) -> dict[str, bytes]:
        """The history not yet written, for the handover transaction."""
        with self._lock:
            pending, self._pending = list(self._pending), []
        return self._history_puts(pending)


# etcd refuses a transaction with more than 128 compares or 128 operations (--max-txn-ops); stay below it.
MAX_TXN_OPS = 120


def claim_together(backend: Backend, leader_key: str, token: int, prepared: Sequence[Prepared],
                   timeout_s: float) -> list[ClaimOutcome]:
    """Claim several jobs' slots in as few transactions as etcd allows: each compares the leader key's create
    revision and every included run key's mod revision, so each job's claim is exactly as fenced as alone. A
    refused transaction refuses all of its claims (the term is over, or a record moved: either way we step down)."""
    outcomes: list[ClaimOutcome] = []
    batch: list[Prepared] = []
    ops = 0

    def flush() -> None:
        if not batch:
            return
        puts = {k: v for p in batch for k, v in p.puts.items()}
        try:
            if len(batch) == 1 and batch[0].control is None:
                revision = backend.claim(leader_key, token, batch[0].claim, puts, timeout_s)
            else:
                revision = backend.claim_all(leader_key, token, [c for p in batch for c in p.compares], puts,
                                             timeout_s)
        except BackendError as err:
            for p in batch:
                p.chain.unanswered(p.slot, err)
            outcomes.extend(ClaimOutcome.FAILED for _ in batch)
        else:
            outcomes.extend(p.chain.answered(p, revision) for p in batch)
        batch.clear()

    for p in prepared:
        if batch and (2 * len(batch) + 3 > MAX_TXN_OPS or ops + len(p.puts) > MAX_TXN_OPS):  # 2 compares a job
            flush()
            ops = 0
        batch.append(p)
        ops += len(p.puts)
    flush()
    return outcomes
