"""`singleton history`: the last runs of a job, from the run record's history ring in etcd."""
from __future__ import annotations

import json
import time
from typing import Any

from singleton.backends.abc import Backend
from singleton.core.config import Config
from singleton.core.records import decode_entry, decode_run
from singleton.v1.run_pb2 import RunEntry, RunRecord


def read_runs(backend: Backend, config: Config, limit: int, timeout_s: float = 3.0, *,
              job: str | None = None) -> tuple[RunRecord | None, list[RunEntry]]:
    """The last claim and up to `limit` finished runs, newest first (for the CLI and the admin API). `job`: one
    job of a jobs file (its own record and history); None: the single `--job`'s."""
    from singleton.ops.jobsview import job_history_prefix, job_run_key

    run_key = config.run_key if job is None else job_run_key(config, job)
    history_prefix = config.history_prefix if job is None else job_history_prefix(config, job)
    kv, _ = backend.get(run_key, timeout_s)
    record = decode_run(kv.value) if kv is not None else None
    entries = [e for e in (decode_entry(kv.value) for kv in backend.get_prefix(history_prefix, timeout_s))
               if e is not None]
    entries.sort(key=lambda e: e.seq, reverse=True)
    return record, entries[:limit]


def read_history(backend: Backend, config: Config, limit: int, timeout_s: float = 3.0) -> dict[str, Any]:
    record, entries = read_runs(backend, config, limit, timeout_s)
    runs = [{"seq": e.seq, "slot": e.slot, "replica_id": e.replica_id, "fencing_token": e.fencing_token,
             "started_at_unix_s": e.started_at_unix_s or None, "duration_s": round(e.duration_s, 6),
             "outcome": e.outcome, "error": e.error or None,
             "coalesced_from": e.coalesced_from or None} for e in entries]
    last_claim = None if record is None else {
        "seq": record.seq, "slot": record.slot, "replica_id": record.replica_id,
        "fencing_token": record.fencing_token, "claimed_at_unix_s": record.claimed_at_unix_s}
    return {"name": config.name, "last_claim": last_claim, "runs": runs}


def show_history(backend: Backend, config: Config, *, as_json: bool, limit: int) -> int:
    history = read_history(backend, config, limit)
    if as_json:
        print(json.dumps(history, indent=2))
        return 0
    claim = history["last_claim"]
    if claim is None:
        print(f"{config.name}: no run recorded under {config.run_key}")
        return 0
    print(f"{config.name}: last claim slot {claim['slot']} (run #{claim['seq']}) by {claim['replica_id']}, "
          f"token {claim['fencing_token']}")
    print(f"{'run':>6}  {'slot':>10}  {'started (UTC)':<23}  {'took':>8}  {'outcome':<9}  {'replica':<16}  token  error")
    for run in history["runs"]:
        started = run["started_at_unix_s"]
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(started)) + f".{int(started % 1 * 1000):03d}" \
            if started else "-"
        took = f"{run['duration_s'] * 1000:.1f}ms" if started else "-"
        extra = f"  (stood in for {run['coalesced_from']}..{run['slot']})" if run["coalesced_from"] else ""
        print(f"{run['seq']:>6}  {run['slot']:>10}  {when:<23}  {took:>8}  {run['outcome']:<9}  "
              f"{run['replica_id']:<16}  {run['fencing_token']:>5}  {run['error'] or ''}{extra}")
    return 0
