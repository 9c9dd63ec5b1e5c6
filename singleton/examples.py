"""Example jobs, for the container image's default configuration and the docs."""
from __future__ import annotations

import logging

from singleton.runtime.jobs import TickContext

log = logging.getLogger("singleton.examples")


def hello(ctx: TickContext) -> None:
    """Logs one line per second from whichever replica leads."""
    log.info("tick slot=%d token=%d replica=%s late=%.1fms", ctx.slot, ctx.fencing_token, ctx.replica_id,
             ctx.lateness_s * 1000)
