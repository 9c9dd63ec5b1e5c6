"""`singleton history`: the last runs of a job, from the run record's history ring in etcd."""
from __future__ import annotations

import json
import time
from typing import Any

from singleton.backends.abc import Backend
from singleton.core.config import Config
from singleton.core.records import decode_entry, decode_run
from singleton.v1.run_pb2 import RunEntry, RunRecord


def read_runs(backend: Backend, config: Config, limit: int, timeout_s: float = 3.0,
              job: str | None = None) -> tuple[RunRecord | None, list[RunEntry]]:
    """The last claim and up to `limit` finished runs, newest first (for the CLI and the admin API). `job`: a named
    job's record (Config.job_run_key); None: the legacy single job's."""
    kv, _ = backend.get(config.job_run_key(job), timeout_s)
    record = decode_run(kv.value) if kv is not None else None
    entries = [e for e in (decode_entry(kv.value) for kv in backend.get_prefix(config.job_history_prefix(job),
                                                                              timeout_s)) if e is not None]
    entries.sort(key=lambda e: e.seq, reverse=True)
    return record, entries[:limit]


def read_history(backend: Backend, config: Config, limit: int, timeout_s: float = 3.0,
                 job: str | None = None) -> dict[str, Any]:
    record, entries = read_runs(backend, config, limit, timeout_s, job)
    runs = [{"seq": e.seq, "slot": e.slot, "replica_id": e.replica_id, "fencing_token": e.fencing_token,
             "started_at_unix_s": e.started_at_unix_s or None, "duration_s": round(e.duration_s, 6),
             "outcome": e.outcome, "error": e.error or None,
             "coalesced_from": e.coalesced_from or None,
             **({"trigger_id": e.trigger_id, "triggered_by": e.triggered_by or None,
                 "trigger_reason": e.trigger_reason or None} if e.trigger_id else {})} for e in entries]
    last_claim = None if record is None else {
        "seq": record.seq, "slot": record.slot, "replica_id": record.replica_id,
        "fencing_token": record.fencing_token, "claimed_at_unix_s": record.claimed_at_unix_s}
    from singleton.ops.control import read_events

    return {"name": config.name, **({"job": job} if job is not None else {}), "last_claim": last_claim, "runs": runs,
            "control_events": read_events(backend, config, job, limit, timeout_s)}


def show_history(backend: Backend, config: Config, *, as_json: bool, limit: int,
                 job: str | None = None) -> int:
    history = read_history(backend, config, limit, job=job)
    if as_json:
        print(json.dumps(history, indent=2))
        return 0
    claim = history["last_claim"]
    if claim is None:
        print(f"{config.name}: no run recorded under {config.job_run_key(job)}")
        show_events(history["control_events"])
        return 0
    print(f"{config.name}{'' if job is None else ' job ' + job}: last claim slot {claim['slot']} (run #{claim['seq']}) by {claim['replica_id']}, "
          f"token {claim['fencing_token']}")
    print(f"{'run':>6}  {'slot':>10}  {'started (UTC)':<23}  {'took':>8}  {'outcome':<9}  {'replica':<16}  token  error")
    for run in history["runs"]:
        started = run["started_at_unix_s"]
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(started)) + f".{int(started % 1 * 1000):03d}" \
            if started else "-"
        took = f"{run['duration_s'] * 1000:.1f}ms" if started else "-"
        extra = f"  (stood in for {run['coalesced_from']}..{run['slot']})" if run["coalesced_from"] else ""
        if run.get("trigger_id"):
            extra += f"  (manual: trigger {run['trigger_id']} by {run['triggered_by'] or '?'}" + \
                (f": {run['trigger_reason']}" if run["trigger_reason"] else "") + ")"
        print(f"{run['seq']:>6}  {run['slot']:>10}  {when:<23}  {took:>8}  {run['outcome']:<9}  "
              f"{run['replica_id']:<16}  {run['fencing_token']:>5}  {run['error'] or ''}{extra}")
    show_events(history["control_events"])
    return 0


def show_events(events: list[dict[str, Any]]) -> None:
    """Operators' control events (pause, resume, skip-next, trigger) and the leader's answers, newest first."""
    if not events:
        return
    print("control events:")
    for e in events:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(e["at_unix_s"]))
        what = {"skipped": f"slot {e['slot']} skipped", "triggered": f"trigger {e['trigger_id']} ran as run #{e['slot']}",
                "trigger-refused": f"trigger {e['trigger_id']} refused", "trigger": f"trigger {e['trigger_id']}",
                "pause": "pause" + (f" until {time.strftime('%H:%M:%S', time.gmtime(e['until_unix_s']))} UTC"
                                    if e["until_unix_s"] else "")}.get(e["kind"], e["kind"])
        print(f"{e['seq']:>6}  {when}  {what:<40}  by {e['by'] or '?'}{'  ' + repr(e['reason']) if e['reason'] else ''}")
