"""Two jobs: one that survives failover, and one deliberately broken (it fails every third slot), to see the
verdict fail: `python -m pytest -o singleton_job=my_jobs.jobs:flaky`."""
from __future__ import annotations

from singleton import TickContext


def every_second(ctx: TickContext) -> None:
    """Writes through the fencing token: a replica whose term is over cannot overwrite a newer leader's result."""
    if not ctx.cancelled:
        ctx.guarded_put("/my-jobs/last-run", f"slot {ctx.slot} by {ctx.replica_id}")


def flaky(ctx: TickContext) -> None:
    if ctx.slot % 3 == 0:
        raise RuntimeError(f"slot {ctx.slot}: lost my connection pool in the failover")
