"""The job: `SINGLETON_JOB=my_job.jobs:every_second` (see k8s/configmap-patch.yaml)."""
from __future__ import annotations

import logging

from singleton import TickContext

log = logging.getLogger("my_job")


def every_second(ctx: TickContext) -> None:
    """Runs once per second on the one replica that leads. Writes through the fencing token, so a replica whose
    term is over (paused, cut off) cannot overwrite a newer leader's result."""
    if ctx.cancelled:
        return
    written = ctx.guarded_put("/my-job/last-run", f"slot {ctx.slot} by {ctx.replica_id}")
    log.info("slot %d token %d %s", ctx.slot, ctx.fencing_token, "written" if written else "refused: term over")
