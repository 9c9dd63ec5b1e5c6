"""Example jobs, for the container image's default configuration and the docs."""
from __future__ import annotations

import logging

from singleton.runtime.jobs import TickContext

log = logging.getLogger("singleton.examples")


def hello(ctx: TickContext) -> None:
    """Logs one line per second from whichever replica leads."""
    log.info("tick slot=%d token=%d replica=%s late=%.1fms", ctx.slot, ctx.fencing_token, ctx.replica_id,
             ctx.lateness_s * 1000)


def report(ctx: TickContext) -> None:
    """A job of `examples/jobs.toml`: builds a report, written through the fencing token (a replica whose term
    is over cannot overwrite a newer leader's)."""
    if ctx.cancelled:
        return
    written = ctx.guarded_put("/examples/report/last", f"slot {ctx.slot} by {ctx.replica_id}")
    log.info("report slot=%d token=%d %s", ctx.slot, ctx.fencing_token, "written" if written else "refused")


async def refresh(ctx: TickContext) -> None:
    """A job of `examples/jobs.toml`: an async one, run on the replica's event loop."""
    log.info("refresh slot=%d token=%d replica=%s", ctx.slot, ctx.fencing_token, ctx.replica_id)


def cleanup(ctx: TickContext) -> None:
    """A job of `examples/jobs.toml`: a slow one that stops early when told to (timeout, step-down, stop)."""
    for _ in range(20):
        if ctx.cancel_event.wait(0.1):
            log.info("cleanup slot=%d cancelled", ctx.slot)
            return
    log.info("cleanup slot=%d done", ctx.slot)
