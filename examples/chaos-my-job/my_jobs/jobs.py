"""Two jobs: one that survives failover, and one deliberately broken, to see the verdict fail:
`python -m pytest -o singleton_job=my_jobs.jobs:forgetful`."""
from __future__ import annotations

from singleton import TickContext

_state: dict[str, int] = {}


def every_second(ctx: TickContext) -> None:
    """Writes through the fencing token: a replica whose term is over cannot overwrite a newer leader's result."""
    if not ctx.cancelled:
        ctx.guarded_put("/my-jobs/last-run", f"slot {ctx.slot} by {ctx.replica_id}")


def forgetful(ctx: TickContext) -> None:
    """Keeps its progress in process memory, as if it ran every slot itself: whenever another process takes over,
    it finds nothing for the previous slot and fails (keep such state in etcd, written with ctx.guarded_put)."""
    last = _state.get("slot")
    _state["slot"] = ctx.slot
    if last != ctx.slot - 1:
        raise RuntimeError(f"slot {ctx.slot}: my state ends at slot {last}, not {ctx.slot - 1}: lost in a failover")
