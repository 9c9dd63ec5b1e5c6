"""Jobs of different shapes for `singleton chaos --jobs jobs.toml` (see ../jobs.toml): each honours its cancel,
as a job must for a graceful stop to hand over promptly."""
from __future__ import annotations

from singleton import TickContext


def quick(ctx: TickContext) -> None:
    ctx.cancel_event.wait(0.02)


def every_two_seconds(ctx: TickContext) -> None:
    ctx.cancel_event.wait(0.05)


def sometimes_slow(ctx: TickContext) -> None:
    """Every third run takes 1.5 s, so the next one starts beside it (overlap = "allow", max_instances = 2)."""
    ctx.cancel_event.wait(1.5 if ctx.slot % 3 == 0 else 0.1)
